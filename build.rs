//! Compiles `static/` into the binary under fingerprinted names.
//!
//! For every file it emits an entry in `ASSETS` (name, URL, content type, bytes) and a constant
//! holding its URL (`static/app.css` → `APP_CSS = "/static/app.<hash>.css"`), so templates
//! link assets through a name the compiler checks. The hash changes whenever the bytes do,
//! which lets `/static/` answer with a year-long immutable cache header.
//! It also makes cargo rebuild when a migration changes (they are embedded by `sqlx::migrate!`).

use std::{env, fmt::Write as _, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=static");

    let mut files: Vec<_> = fs::read_dir("static")
        .expect("static/ exists")
        .map(|entry| entry.expect("readable static/ entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();

    let mut table = String::from("pub static ASSETS: &[Asset] = &[\n");
    let mut constants = String::new();
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name");
        let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
        let bytes = fs::read(path).expect("readable asset");
        let url = format!("/static/{stem}.{:016x}.{extension}", fnv1a(&bytes));
        // Named from the crate's own directory when the crate compiles, not as an absolute
        // path written here: two checkouts sharing one target dir (a CI clone beside the
        // working copy) share this script's output, and one's path would name the other's
        // files.
        writeln!(
            table,
            "    Asset {{ url: {url:?}, content_type: {:?}, bytes: include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?})) }},",
            content_type(extension),
            format!("/static/{name}")
        )
        .unwrap();
        let constant: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        writeln!(constants, "pub const {constant}: &str = {url:?};").unwrap();
    }
    table.push_str("];\n");

    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("assets.rs");
    fs::write(out, constants + &table).expect("write assets.rs");
}

/// FNV-1a, 64 bit: a stable content fingerprint (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn content_type(extension: &str) -> &'static str {
    match extension {
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        other => panic!("static/: no content type known for .{other}; add it to build.rs"),
    }
}

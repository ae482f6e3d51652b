//! The account and team story in real Chromium: `tests/browser/auth_flow.mjs` (playwright-core
//! driving Debian's `/usr/bin/chromium`) signs up, follows the verification link of the email
//! that reached the fake SMTP server, logs out, logs in and sees the dashboard; then creates a
//! team and invites a new address, and in a second browser context (the invitee, signed out)
//! follows the emailed invitation link, signs up from it (no verification email: the
//! invitation vouches for the address) and joins the team, which the owner then sees. Last, the
//! owner turns on two-factor sign-in from the QR code page (the script computes the TOTP codes
//! from the `otpauth://` URI's secret itself) and keeps a recovery code; logs out and in: the
//! password alone leads to `/login/2fa` and no session, the code used to turn it on is refused,
//! the next step's code signs in; and once more with the recovery code. It leaves screenshots
//! of the landing page, the signup form with an error, the dashboard, the invitation page, the
//! owner's team page and the two-factor enrolment in `$CARGO_TARGET_DIR/browser-screenshots/`
//! (or `KEEL_SCREENSHOTS`; the README's copies in `docs/screenshots/` are refreshed with
//! `KEEL_SCREENSHOTS=docs/screenshots`).
//!
//! The script asks for the emailed links on its stdout (`NEED_LINK <email>` for the
//! verification link, `NEED_INVITE <email>` for the invitation's) and gets each as one line on
//! its stdin, read here from the fake SMTP server. The two-factor codes need no help from here.
//!
//! Needs Chromium and the script's npm packages: `.ci/run` installs both. Without them this
//! test fails (it never passes without having run the browser).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    helpers::{spawn_app_with, wait_until},
    smtp_server::{Behaviour, FakeSmtp},
};

const CHROMIUM: &str = "/usr/bin/chromium";
const SETUP: &str = "run `bash .ci/run` (it installs them), or \
     `apt-get install -y chromium nodejs npm && (cd tests/browser && npm ci)`";
/// The address the script signs up with (the test's database is its own, so it is new).
const EMAIL: &str = "ada@example.com";
/// The address it invites (new too: the README's screenshots show both).
const INVITEE: &str = "bo@example.com";
/// Longer than the script's own limit, so that it reports which step hung; shorter than
/// nextest's (`.config/nextest.toml`).
const WHOLE_RUN: Duration = Duration::from_secs(110);
const VERIFY_PATH: &str = "/verify-email?token=";

/// A link the script asks for with a line `<request><email>`, and the email it comes in.
#[derive(Clone, Copy, PartialEq, Eq)]
struct EmailedLink {
    request: &'static str,
    /// The email, for messages.
    what: &'static str,
    /// Text that only this kind of email holds (once quoted-printable is undone).
    holds: &'static str,
    /// The link's path up to its token.
    path: &'static str,
}

const VERIFICATION: EmailedLink = EmailedLink {
    request: "NEED_LINK ",
    what: "verification email",
    holds: VERIFY_PATH,
    path: VERIFY_PATH,
};

const INVITATION: EmailedLink = EmailedLink {
    request: "NEED_INVITE ",
    what: "invitation email",
    holds: "invited you to",
    path: "/invite?token=",
};

/// The directory of the scripts, once Chromium and their npm packages are known to be there.
fn browser_scripts(root: &Path) -> std::path::PathBuf {
    let scripts = root.join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser test needs Chromium at {CHROMIUM}: {SETUP}"
    );
    assert!(
        scripts.join("node_modules/playwright-core/package.json").exists(),
        "the browser test needs tests/browser/node_modules (playwright-core): {SETUP}"
    );
    scripts
}

#[tokio::test]
async fn a_visitor_signs_up_invites_someone_who_joins_and_turns_on_two_factor_sign_in_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = browser_scripts(root);

    let smtp = FakeSmtp::start(Behaviour::default()).await;
    let app = spawn_app_with(|env| {
        env.insert("SMTP_URL", smtp.url());
    })
    .await;

    let mut script = Script::start(
        &scripts,
        "auth_flow.mjs",
        &[
            ("KEEL_URL", app.address.clone()),
            ("KEEL_SCREENSHOTS", screenshot_dir(root)),
            ("KEEL_EMAIL", EMAIL.to_owned()),
            ("KEEL_INVITEE", INVITEE.to_owned()),
        ],
    );
    let started = Instant::now();
    let deadline = started + WHOLE_RUN;
    let mut invitees = Vec::new();
    while let Some(line) = script.next_line(deadline).await {
        let Some((link, email)) = [VERIFICATION, INVITATION]
            .into_iter()
            .find_map(|link| Some((link, line.strip_prefix(link.request)?.trim().to_owned())))
        else {
            continue;
        };
        let path = wait_until(&format!("the {}", link.what), Duration::from_secs(30), || {
            let found = emailed_path(&smtp, &email, &link);
            async move { found }
        })
        .await;
        if link == INVITATION {
            invitees.push(email);
        }
        // The emailed link starts with BASE_URL, which is not where the test app listens.
        script.send_line(&format!("{}{path}", app.address));
    }
    let status = script.wait(deadline).await;
    assert!(
        status.is_some_and(|status| status.success()),
        "the browser flow failed ({}) after {:.1} s.\n--- stdout\n{}\n--- stderr\n{}",
        status.map_or_else(|| "did not end in time, killed".to_owned(), |s| s.to_string()),
        started.elapsed().as_secs_f64(),
        script.stdout.join("\n"),
        script.stderr.lock().unwrap(),
    );
    assert_eq!(invitees, [INVITEE], "the invitation links the script asked for");
    // Signing up through the invitation verified the address: no verification email for it.
    assert!(
        emailed_path(&smtp, INVITEE, &VERIFICATION).is_err(),
        "{INVITEE} signed up through an invitation and was still sent a verification email"
    );
}

/// The operator console in Chromium (`tests/browser/console.mjs`): an operator logs in, opens
/// the overview, finds a user, views the product as them (the banner names both; the console
/// answers 403 meanwhile), stops and is themselves again; then a stored event's page. Leaves
/// `admin-overview.png`, `admin-impersonation.png` and `admin-event.png` with the others.
#[tokio::test]
async fn an_operator_finds_a_user_views_the_product_as_them_and_stops_in_chromium() {
    const OPERATOR: &str = "ops@example.com";
    const CUSTOMER: &str = "carla@example.com";
    const PASSWORD: &str = "console password 1";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = browser_scripts(root);
    let app = crate::helpers::spawn_web_only_with(|_| {}).await;
    crate::visitor::Visitor::signed_up(&app, OPERATOR, PASSWORD).await;
    crate::visitor::Visitor::signed_up(&app, CUSTOMER, PASSWORD).await;
    let event = crate::billing::event("", "invoice.payment_failed");
    let event_id = event["id"].as_str().unwrap().to_owned();
    let mut db = app.database.connect().await;
    sqlx::query("UPDATE users SET is_operator = true WHERE email = $1")
        .bind(OPERATOR)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO stripe_events (id, type, api_version, livemode, created, payload, processed_at)
         VALUES ($1, 'invoice.payment_failed', $3, false, now(), $2, now())",
    )
    .bind(&event_id)
    .bind(serde_json::to_string(&event).unwrap())
    .bind(event["api_version"].as_str())
    .execute(&mut db)
    .await
    .unwrap();

    let mut script = Script::start(
        &scripts,
        "console.mjs",
        &[
            ("KEEL_URL", app.address.clone()),
            ("KEEL_SCREENSHOTS", screenshot_dir(root)),
            ("KEEL_OPERATOR", OPERATOR.to_owned()),
            ("KEEL_PASSWORD", PASSWORD.to_owned()),
            ("KEEL_CUSTOMER", CUSTOMER.to_owned()),
            ("KEEL_EVENT", event_id),
        ],
    );
    let started = Instant::now();
    let status = script.wait(started + WHOLE_RUN).await;
    assert!(
        status.is_some_and(|status| status.success()),
        "the console flow failed ({}) after {:.1} s.\n--- stderr\n{}",
        status.map_or_else(|| "did not end in time, killed".to_owned(), |s| s.to_string()),
        started.elapsed().as_secs_f64(),
        script.stderr.lock().unwrap(),
    );
}

/// `link.path` and its token (e.g. `/invite?token=…`) from an email to `email` that holds
/// `link.holds`, if one arrived.
fn emailed_path(smtp: &FakeSmtp, email: &str, link: &EmailedLink) -> Result<String, String> {
    let accepted = smtp.accepted();
    let to_them: Vec<_> = accepted
        .iter()
        .filter(|message| message.recipients.iter().any(|r| r.eq_ignore_ascii_case(email)))
        .collect();
    for message in &to_them {
        let text = decode_quoted_printable(&message.data);
        if !text.contains(link.holds) {
            continue;
        }
        let Some(start) = text.find(link.path) else {
            return Err(format!("no link to {} in the {}:\n{text}", link.path, link.what));
        };
        let token: String = text[start + link.path.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if token.is_empty() {
            return Err(format!("an empty token in the {}:\n{text}", link.what));
        }
        return Ok(format!("{}{token}", link.path));
    }
    Err(format!(
        "no {} to {email} ({} messages to them, {} in all)",
        link.what,
        to_them.len(),
        accepted.len()
    ))
}

/// Undoes quoted-printable: soft line breaks (`=` at a line's end) and `=XX` bytes.
fn decode_quoted_printable(data: &str) -> String {
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if bytes[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `node <script>`, its stdout as lines through a channel, its stderr collected (and
/// echoed, so a hung run still shows its progress). Killed if the test ends first.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn start(dir: &Path, name: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new("node")
            .arg(name)
            .current_dir(dir)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("the browser test needs node ({error}): {SETUP}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let collected = Arc::new(Mutex::new(String::new()));
        let collecting = Arc::clone(&collected);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut all = collecting.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Self {
            child,
            stdin,
            lines,
            stdout: Vec::new(),
            stderr: collected,
        }
    }

    /// The next line of stdout; `None` once stdout closed (the script ends) or at `deadline`.
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, self.lines.recv()).await.ok()??;
        self.stdout.push(line.clone());
        Some(line)
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the script's stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the script's stdin");
    }

    /// The exit status, or `None` (and the script killed) if it runs past `deadline`.
    async fn wait(&mut self, deadline: Instant) -> Option<ExitStatus> {
        self.stdin = None;
        loop {
            if let Some(status) = self.child.try_wait().expect("the script's status") {
                // Let the reader threads take the last output.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn quoted_printable_soft_breaks_and_escapes_are_undone() {
    let encoded = "http://127.0.0.1/verify-email?token=3DabcDEF_-=\r\n12=\n34 caf=C3=A9";
    assert_eq!(
        decode_quoted_printable(encoded),
        "http://127.0.0.1/verify-email?token=abcDEF_-1234 café"
    );
}

/// Where the screenshots go: `KEEL_SCREENSHOTS`, else the target dir, so that a test run
/// never rewrites files under version control.
fn screenshot_dir(root: &Path) -> String {
    if let Ok(dir) = std::env::var("KEEL_SCREENSHOTS") {
        return root.join(dir).display().to_string();
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), Into::into);
    target.join("browser-screenshots").display().to_string()
}

//! Test harness: the real application (`App::build`, as `main` builds it) on a random port,
//! against real PostgreSQL and Redis, with a database and a Redis key prefix of its own.
//!
//! `KEEL_TEST_DATABASE_URL` (server URL without a database, default
//! `postgres://postgres@127.0.0.1:5432`) and `KEEL_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) point at the servers. `TEST_LOG=1` prints the app's logs.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use keel::{App, Config, config::LogFormat};
use sqlx::{Connection as _, PgConnection, migrate::MigrateDatabase as _};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

pub fn database_server_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A database name no other test uses.
pub fn unique_database_name() -> String {
    format!("keel_test_{}", uuid::Uuid::new_v4().simple())
}

/// The environment every test app starts from: development mode, a random port, rate limits
/// high enough that only the rate-limit tests meet them.
pub fn test_env(database: &str) -> HashMap<&'static str, String> {
    [
        ("APP_ENV", "development".to_owned()),
        ("BIND_ADDR", "127.0.0.1:0".to_owned()),
        ("BASE_URL", "http://127.0.0.1".to_owned()),
        ("DATABASE_URL", format!("{}/{database}", database_server_url())),
        ("REDIS_URL", redis_url()),
        ("RATE_LIMIT_PER_SECOND", "1000".to_owned()),
        ("RATE_LIMIT_BURST", "1000".to_owned()),
        ("AUTH_RATE_LIMIT_PER_MINUTE", "1000".to_owned()),
    ]
    .into()
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // The guard lives for the whole test process.
            std::mem::forget(keel::telemetry::init(LogFormat::Pretty));
        }
    });
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// Follows no redirects, so tests see the 303s themselves.
    pub client: reqwest::Client,
    pub database: DatabaseGuard,
    shutdown: CancellationToken,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the app after `customize` has adjusted its environment.
pub async fn spawn_app_with(customize: impl FnOnce(&mut HashMap<&'static str, String>)) -> TestApp {
    spawn(customize, true).await
}

/// The app in production mode, with the values production requires (a random key, the test
/// Redis named as database 0: production refuses development values).
pub async fn spawn_production_app() -> TestApp {
    let secret_key: String = (0..4)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let redis = format!("{}/0", redis_url().trim_end_matches('/'));
    spawn_app_with(|env| {
        for (name, value) in [
            ("APP_ENV", "production"),
            ("BASE_URL", "https://app.example.com"),
            ("REDIS_URL", &redis),
            ("SECRET_KEY", &secret_key),
            ("STRIPE_SECRET_KEY", "sk_test_123"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_123"),
            ("SMTP_URL", "smtp://127.0.0.1:1"),
            ("EMAIL_FROM", "Acme <hello@acme.test>"),
        ] {
            env.insert(name, value.to_owned());
        }
    })
    .await
}

/// Like [`spawn_app_with`], as `keel serve --no-worker`: queued jobs stay queued, for tests of
/// what a request enqueues.
pub async fn spawn_web_only_with(customize: impl FnOnce(&mut HashMap<&'static str, String>)) -> TestApp {
    spawn(customize, false).await
}

async fn spawn(customize: impl FnOnce(&mut HashMap<&'static str, String>), worker: bool) -> TestApp {
    init_logging();
    let database = DatabaseGuard::new(unique_database_name());
    let mut env = test_env(&database.name);
    customize(&mut env);
    // Created here rather than by the app, so that tests can run it in production mode too.
    let url = env["DATABASE_URL"].clone();
    if !sqlx::Postgres::database_exists(&url)
        .await
        .expect("PostgreSQL answers")
    {
        sqlx::Postgres::create_database(&url)
            .await
            .expect("create the test database");
    }
    let mut config = Config::from_lookup(|name| env.get(name).cloned()).expect("test configuration is valid");
    config.redis_key_prefix = format!("keel_test:{}:", database.name);
    let app = App::build(config).await.expect("app builds");
    let app = if worker { app } else { app.without_worker() };
    let port = app.port();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: client(),
        database,
        shutdown,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("HTTP client")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process (keel, a worker) killed with SIGKILL when the test ends, or fails first.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// `kill -9`, and reaped.
    pub fn kill_9(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops its database when the test ends.
pub struct DatabaseGuard {
    pub name: String,
}

impl DatabaseGuard {
    pub fn new(name: String) -> Self {
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", database_server_url(), self.name)
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .expect("connect to the test database")
    }
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let url = self.url();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(sqlx::Postgres::force_drop_database(&url))?;
            anyhow::Ok(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A TCP forwarder between the app and PostgreSQL that a test can freeze (the database stops
/// answering but keeps connections open: a hung server) or kill (connections reset, port
/// closed: an unreachable server).
pub struct TcpProxy {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    killed: CancellationToken,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let frozen = Arc::new(AtomicBool::new(false));
        let killed = CancellationToken::new();
        let (frozen_, killed_) = (Arc::clone(&frozen), killed.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = killed_.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(forward(client, upstream, Arc::clone(&frozen_), killed_.clone()));
            }
        });
        Self { addr, frozen, killed }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn kill(&self) {
        self.killed.cancel();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.killed.cancel();
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    frozen: Arc<AtomicBool>,
    killed: CancellationToken,
) {
    let connection = async {
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            return;
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(client_read, server_write, &frozen),
            pump(server_read, client_write, &frozen)
        );
    };
    tokio::select! {
        () = connection => {}
        () = killed.cancelled() => {}
    }
}

/// Copies bytes one way; once frozen, holds what it read and never delivers it.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, frozen: &AtomicBool) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The PostgreSQL server address behind `KEEL_TEST_DATABASE_URL`.
pub fn database_socket_addr() -> SocketAddr {
    let url = url::Url::parse(&database_server_url()).expect("KEEL_TEST_DATABASE_URL is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .expect("KEEL_TEST_DATABASE_URL names an IP address or localhost")
}

/// `postgres://user@host:port` of the server with host and port replaced by `addr`.
pub fn database_server_url_via(addr: SocketAddr) -> String {
    let mut url = url::Url::parse(&database_server_url()).expect("KEEL_TEST_DATABASE_URL is a URL");
    url.set_host(Some(&addr.ip().to_string())).expect("host");
    url.set_port(Some(addr.port())).expect("port");
    url.as_str().trim_end_matches('/').to_owned()
}

/// The `keel` binary with exactly `env`: nothing from the developer's shell (or a `.env`,
/// since it runs from the temp directory) may leak in.
pub fn keel_command<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(std::env::temp_dir());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command
}

/// Runs `keel ARGS…` with `env` to the end: its exit code, and stdout followed by stderr.
pub fn run_keel<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
) -> (i32, String) {
    let output = keel_command(args, env).output().expect("keel runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().expect("exited, not killed"), text)
}

/// [`run_keel`] from async code.
pub async fn run_keel_async(args: &[&str], env: Vec<(&'static str, String)>) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_keel(&args, env)
    })
    .await
    .expect("keel runs")
}

/// Polls `check` until it returns `Some`, for at most `within`; panics with `what` and the
/// last state (`check`'s `Err`) if it never does.
pub async fn wait_until<T, F: Future<Output = Result<T, String>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if std::time::Instant::now() >= deadline => {
                panic!("{what}: still {state} after {within:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A database of its own with every migration applied, without an app.
pub async fn migrated_database() -> (DatabaseGuard, sqlx::PgPool) {
    let database = DatabaseGuard::new(unique_database_name());
    sqlx::Postgres::create_database(&database.url())
        .await
        .expect("create database");
    let pool = sqlx::PgPool::connect(&database.url()).await.expect("connect");
    keel::db::MIGRATOR.run(&pool).await.expect("migrations");
    (database, pool)
}

pub async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("a JSON body")
}

/// A fresh browser's view of the form at `path`: its `keel_csrf` cookie (as a `Cookie`
/// header) and the form's token.
pub async fn form_token(client: &reqwest::Client, base: &str, path: &str) -> (String, String) {
    let response = client.get(format!("{base}{path}")).send().await.unwrap();
    let cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|set| set.to_str().ok()?.split(';').next())
        .collect::<Vec<_>>()
        .join("; ");
    let body = response.text().await.unwrap();
    let token = crate::visitor::field_value(&body, "csrf_token").expect("the form has a token");
    (cookie, token)
}

/// The app sending its emails to a fake SMTP server of its own.
pub async fn spawn_app_with_smtp() -> (TestApp, crate::smtp_server::FakeSmtp) {
    spawn_app_with_smtp_and(|_| {}).await
}

/// [`spawn_app_with_smtp`] after `customize` has adjusted the rest of its environment.
pub async fn spawn_app_with_smtp_and(
    customize: impl FnOnce(&mut HashMap<&'static str, String>),
) -> (TestApp, crate::smtp_server::FakeSmtp) {
    let smtp = crate::smtp_server::FakeSmtp::start(crate::smtp_server::Behaviour::default()).await;
    let url = smtp.url();
    let app = spawn_app_with(|env| {
        env.insert("SMTP_URL", url);
        customize(env);
    })
    .await;
    (app, smtp)
}

/// A `Stripe-Signature` header for `body` signed now with `secret`, as Stripe signs.
pub fn stripe_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

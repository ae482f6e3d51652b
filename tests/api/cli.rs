//! The `keel` binary itself: configuration refusal, `migrate`, `healthcheck`, and a graceful
//! stop on SIGTERM. These run the compiled binary as a process, as an operator would.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{
    ChildGuard, DatabaseGuard, TcpProxy, database_server_url_via, database_socket_addr, free_port,
    keel_command, redis_url, run_keel, spawn_app, unique_database_name,
};

/// A complete production environment whose secrets are easy to spot in output.
fn production_env() -> HashMap<&'static str, String> {
    [
        ("APP_ENV", "production"),
        ("BASE_URL", "https://app.example.com"),
        ("DATABASE_URL", "postgres://keel:SeCrEt-db-password@db:5432/keel"),
        ("REDIS_URL", "redis://:SeCrEt-redis@redis:6379"),
        ("SECRET_KEY", "5eC2e7a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1"),
        ("STRIPE_SECRET_KEY", "sk_live_SeCrEtStripeKey"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_SeCrEtWebhook"),
        ("SMTP_URL", "smtps://mailer:SeCrEt-smtp@smtp.example.com:465"),
        ("EMAIL_FROM", "Acme <hello@acme.com>"),
        ("METRICS_TOKEN", "SeCrEt-metrics-token-0123456789"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn run(args: &[&str], env: &HashMap<&'static str, String>) -> (i32, String) {
    run_keel(args, env)
}

#[test]
fn production_without_a_required_variable_exits_2_naming_it() {
    for var in [
        "BASE_URL",
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "SMTP_URL",
        "EMAIL_FROM",
    ] {
        let mut env = production_env();
        env.remove(var);
        for command in [&["check-config"][..], &["serve"], &[]] {
            let (code, output) = run(command, &env);
            assert_eq!(code, 2, "{command:?} without {var}: {output}");
            assert!(
                output.contains(&format!("error: {var}: ")),
                "{command:?} without {var}: {output}"
            );
            assert!(!output.contains("SeCrEt"), "a secret was printed: {output}");
            assert!(
                !output.contains("panicked") && !output.contains("backtrace"),
                "{output}"
            );
        }
    }
}

#[test]
fn production_refuses_development_values_without_printing_them() {
    let mut env = production_env();
    env.insert("SECRET_KEY", "SeCrEt-short".to_owned());
    env.insert("BASE_URL", "http://app.example.com".to_owned());
    env.insert("DATABASE_URL", keel::config::defaults::DATABASE_URL.to_owned());
    let (code, output) = run(&["check-config"], &env);
    assert_eq!(code, 2, "{output}");
    for var in ["SECRET_KEY", "BASE_URL", "DATABASE_URL"] {
        assert!(output.contains(&format!("error: {var}: ")), "{var}: {output}");
    }
    assert!(!output.contains("SeCrEt"), "{output}");
    assert!(!output.contains("postgres:postgres"), "{output}");
}

#[test]
fn check_config_accepts_a_complete_production_environment() {
    let (code, output) = run(&["check-config"], &production_env());
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("configuration OK (production)"), "{output}");
    assert!(!output.contains("SeCrEt"), "{output}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, output) = run(&["no-such-command"], &HashMap::new());
    assert_eq!(code, 2, "{output}");
    let (code, _) = run(&["--help"], &HashMap::new());
    assert_eq!(code, 0);
}

fn development_env(database_server: &str, database: &str, bind_port: u16) -> HashMap<&'static str, String> {
    [
        ("APP_ENV", "development".to_owned()),
        ("BIND_ADDR", format!("127.0.0.1:{bind_port}")),
        ("DATABASE_URL", format!("{database_server}/{database}")),
        ("REDIS_URL", redis_url()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into()
}

#[tokio::test]
async fn migrate_creates_the_development_database_and_applies_migrations() {
    let database = DatabaseGuard::new(unique_database_name());
    let env = development_env(&crate::helpers::database_server_url(), &database.name, 0);
    let output = tokio::task::spawn_blocking(move || run(&["migrate"], &env))
        .await
        .unwrap();
    assert_eq!(output.0, 0, "{}", output.1);
    assert!(output.1.contains("migrations applied"), "{}", output.1);
    let mut connection = database.connect().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut connection)
        .await
        .expect("the migrations table exists");
    assert_eq!(applied, keel::db::MIGRATOR.iter().count() as i64);
}

#[tokio::test]
async fn healthcheck_exits_0_when_live_and_1_when_not() {
    let app = spawn_app().await;
    let live: HashMap<_, _> = [("BIND_ADDR", format!("0.0.0.0:{}", app.port))].into();
    let closed: HashMap<_, _> = [("BIND_ADDR", "127.0.0.1:1".to_owned())].into();
    let invalid: HashMap<_, _> = [("BIND_ADDR", "nonsense".to_owned())].into();
    let codes = tokio::task::spawn_blocking(move || {
        [
            run(&["healthcheck"], &live),
            run(&["healthcheck"], &closed),
            run(&["healthcheck"], &invalid),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        codes.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        [0, 1, 2],
        "{codes:?}"
    );
}

pub async fn wait_until_live(base: &str) {
    let client = crate::helpers::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/health/live")).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("keel did not become live at {base}");
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    // A hung database makes /health take its one-second timeout: a request reliably in flight.
    let proxy = TcpProxy::start(database_socket_addr()).await;
    let database = DatabaseGuard::new(unique_database_name());
    let port = free_port();
    let env = development_env(&database_server_url_via(proxy.addr), &database.name, port);
    let child = keel_command(&["serve"], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_live(&base).await;

    let client = crate::helpers::client();
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/health");
        async move {
            let response = client.get(url).send().await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            anyhow::Ok((status, body))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let (status, body) = in_flight.await.unwrap().expect("the in-flight request completed");
    assert_eq!(status, 503);
    assert_eq!(
        body["checks"]["postgres:responseTime"][0]["output"],
        "no answer within 1000 ms"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "keel still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    if let Some(mut stdout) = child.0.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut log);
    }
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(log.contains("shutdown signal received"), "{log}");
    // After the stop nothing listens any more.
    assert!(client.get(format!("{base}/health/live")).send().await.is_err());
}

#[test]
fn a_malformed_env_file_exits_2_without_echoing_its_line() {
    let dir = std::env::temp_dir().join(format!("keel-dotenv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "APP_ENV=development\nSECRET_KEY hunter2-SeCrEt\n",
    )
    .unwrap();
    let output = keel_command(&["check-config"], HashMap::<&str, String>::new())
        .current_dir(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("error: .env: cannot parse the line"), "{text}");
    assert!(!text.contains("SeCrEt"), "the line was echoed: {text}");
}

//! What keel logs about attacks, read from a real `keel serve`'s JSON lines: failed logins and
//! locks with the client address (never the password), forged webhooks a line a second at most.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::helpers::{
    ChildGuard, DatabaseGuard, client, database_server_url, form_token, free_port, keel_command, redis_url,
    unique_database_name,
};

#[tokio::test]
async fn failed_logins_are_logged_with_the_client_address_and_forged_webhooks_are_sampled() {
    let database = DatabaseGuard::new(unique_database_name());
    let port = free_port();
    let log = tempfile_path();
    let child = keel_command(
        &["serve"],
        [
            ("APP_ENV", "development".to_owned()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            (
                "DATABASE_URL",
                format!("{}/{}", database_server_url(), database.name),
            ),
            ("REDIS_URL", redis_url()),
            ("LOG_FORMAT", "json".to_owned()),
            ("TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_logs".to_owned()),
            ("RATE_LIMIT_BURST", "1000".to_owned()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "1000".to_owned()),
        ],
    )
    .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let _child = ChildGuard(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "keel did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Seven wrong passwords for one address from one client: five refused, then locked.
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct-horse-battery-guess";
    let (cookie, token) = form_token(&http, &base, "/login").await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let response = http
            .post(format!("{base}/login"))
            .header("cookie", &cookie)
            .header("x-forwarded-for", "203.0.113.77")
            .form(&[
                ("email", email.as_str()),
                ("password", password),
                ("csrf_token", &token),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..5], [422; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");

    // A flood of forged webhook deliveries.
    let started = Instant::now();
    for _ in 0..200 {
        let response = http
            .post(format!("{base}/webhooks/stripe"))
            .header("stripe-signature", "t=1,v1=00")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    let flood_secs = started.elapsed().as_secs();
    // Lines are written in batches: wait for the flood's access-log lines to be out.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|line| line["message"] == message).collect()
    };
    let failed = with("login failed");
    assert_eq!(failed.len(), 5, "{text}");
    let locked = with("login refused: too many failures");
    assert!(!locked.is_empty(), "{text}");
    for line in failed.iter().chain(&locked) {
        assert_eq!(line["client"], "203.0.113.77", "{line}");
    }
    assert!(!text.contains(password), "the password is in the log");
    let refused = with("webhook delivery refused: bad signature");
    assert!(
        !refused.is_empty() && refused.len() as u64 <= flood_secs + 2,
        "{} lines for 200 forged deliveries in {flood_secs} s",
        refused.len()
    );
    let _ = std::fs::remove_file(&log);
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keel-log-{}.jsonl", uuid::Uuid::new_v4().simple()))
}

//! What keel logs about attacks, read from a real `keel serve`'s JSON lines: failed logins,
//! locks and wrong second-factor codes with the client address (never the password), forged
//! webhooks a line a second at most.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::helpers::{
    ChildGuard, DatabaseGuard, client, database_server_url, form_token, free_port, keel_command, redis_url,
    unique_database_name,
};

/// A real `keel serve` writing JSON lines to `log`, trusting 127.0.0.1 as its proxy; its base
/// URL, and what keeps it and its database alive.
async fn serve_logging_to(log: &std::path::Path) -> (String, ChildGuard, DatabaseGuard) {
    let database = DatabaseGuard::new(unique_database_name());
    let port = free_port();
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
    .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let child = ChildGuard(child);
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
    (base, child, database)
}

/// The JSON lines of `log`.
fn json_lines(log: &std::path::Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (text, lines)
}

#[tokio::test]
async fn failed_logins_are_logged_with_the_client_address_and_forged_webhooks_are_sampled() {
    let log = tempfile_path();
    let (base, _child, _database) = serve_logging_to(&log).await;
    let http = client();

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

    let (text, lines) = json_lines(&log);
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

/// A browser's cookies, for requests to a `keel serve` of these tests.
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, String>);

impl Jar {
    fn keep(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if set.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("; ")
    }

    /// GETs `path`; the page's body.
    async fn get(&mut self, http: &reqwest::Client, base: &str, path: &str) -> String {
        let response = http
            .get(format!("{base}{path}"))
            .header("cookie", self.header())
            .send()
            .await
            .unwrap();
        self.keep(&response);
        response.text().await.unwrap()
    }

    /// Posts `fields` with the CSRF token of the form at `form`, as from `client_ip`; the status.
    async fn submit(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        form: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> u16 {
        let page = self.get(http, base, form).await;
        let token = crate::visitor::field_value(&page, "csrf_token").expect("a form");
        let mut fields = fields.to_vec();
        fields.push(("csrf_token", &token));
        let response = http
            .post(format!("{base}{action}"))
            .header("cookie", self.header())
            .header("x-forwarded-for", "203.0.113.88")
            .form(&fields)
            .send()
            .await
            .unwrap();
        self.keep(&response);
        response.status().as_u16()
    }
}

#[tokio::test]
async fn wrong_second_factor_codes_are_logged_with_the_client_address() {
    let log = tempfile_path();
    let (base, _child, _database) = serve_logging_to(&log).await;
    let http = client();
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple";

    let mut owner = Jar::default();
    let signed_up = owner
        .submit(
            &http,
            &base,
            "/signup",
            "/signup",
            &[("email", &email), ("password", password)],
        )
        .await;
    assert_eq!(signed_up, 303);
    let enrolment = owner.get(&http, &base, "/settings/2fa").await;
    let start = enrolment.find("otpauth://").expect("the URI");
    let uri = enrolment[start..]
        .split('<')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let totp = totp_rs::Totp::from_url(&uri).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = totp.generate(now).to_string();
    let enabled = owner
        .submit(
            &http,
            &base,
            "/settings/2fa",
            "/settings/2fa/enable",
            &[("code", &code)],
        )
        .await;
    assert_eq!(enabled, 200);

    let mut attacker = Jar::default();
    let password_step = attacker
        .submit(
            &http,
            &base,
            "/login",
            "/login",
            &[("email", &email), ("password", password)],
        )
        .await;
    assert_eq!(password_step, 303);
    let wrong = attacker
        .submit(&http, &base, "/login/2fa", "/login/2fa", &[("code", "000000")])
        .await;
    assert_eq!(wrong, 422);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (text, lines) = json_lines(&log);
    let refused: Vec<_> = lines
        .iter()
        .filter(|line| line["message"] == "2FA code refused")
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["client"], "203.0.113.88", "{text}");
    let _ = std::fs::remove_file(&log);
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keel-log-{}.jsonl", uuid::Uuid::new_v4().simple()))
}

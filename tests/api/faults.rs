//! Faults of the real servers: Redis stopped and started again, PostgreSQL frozen with SIGSTOP,
//! PostgreSQL restarted while webhooks arrive. Each test runs its own server
//! (`private_servers`), so stopping it disturbs nobody else. docs/RELIABILITY.md reports what
//! these tests measure.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hmac::{KeyInit as _, Mac as _};
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{ChildGuard, TestApp, free_port, spawn_app_with, wait_until},
    private_servers::{PrivatePostgres, PrivateRedis},
    visitor::Visitor,
};

const SECRET: &str = "whsec_fault_tests";
const PASSWORD: &str = "correct horse battery";

/// A distinct, validly signed event, as Stripe would deliver it.
fn signed_event(id: &str) -> (String, String) {
    let body = json!({"id": id, "object": "event", "type": "customer.updated", "created": 1_763_000_000,
                      "livemode": false, "data": {"object": {"id": "cus_fault", "object": "customer"}}})
    .to_string();
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    (
        body,
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes())),
    )
}

async fn deliver(app: &TestApp, id: &str) -> StatusCode {
    let (body, signature) = signed_event(id);
    app.client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .map_or(StatusCode::BAD_GATEWAY, |r| r.status())
}

async fn health(app: &TestApp) -> (StatusCode, serde_json::Value) {
    let response = app.get("/health").await;
    (response.status(), response.json().await.unwrap())
}

/// Waits until `/health` answers 200; panics after `within`.
async fn health_passes_within(app: &TestApp, within: Duration) {
    wait_until("/health to pass again", within, || async {
        let (status, _) = health(app).await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
}

async fn signed_up<'a>(app: &'a TestApp, email: &str) -> Visitor<'a> {
    Visitor::signed_up(app, email, PASSWORD).await
}

/// Starts a private PostgreSQL off the runtime (initdb takes a second or two).
async fn private_postgres() -> Arc<PrivatePostgres> {
    Arc::new(tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap())
}

#[tokio::test]
async fn with_redis_stopped_pages_logins_and_webhooks_work_and_health_recovers() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL", url);
        env.insert("STRIPE_WEBHOOK_SECRET", SECRET.into());
    })
    .await;
    let mut member = signed_up(&app, "member@example.com").await;
    assert_eq!(health(&app).await.0, StatusCode::OK);

    redis.stop();
    let (status, report) = wait_until("/health to fail on Redis", Duration::from_secs(5), || async {
        let (status, report) = health(&app).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Ok((status, report))
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        report["checks"]["redis:responseTime"][0]["status"], "fail",
        "{report}"
    );
    assert_eq!(
        report["checks"]["postgres:responseTime"][0]["status"], "pass",
        "{report}"
    );

    // Degraded, not down: pages, a login (throttled in-process) and a webhook all work.
    assert_eq!(app.get("/").await.status(), StatusCode::OK);
    assert_eq!(member.get("/dashboard").await.status, StatusCode::OK);
    let mut returning = Visitor::new(&app);
    let login = returning
        .submit(
            "/login",
            "/login",
            &[("email", "member@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        (login.status, login.location()),
        (StatusCode::SEE_OTHER, "/dashboard")
    );
    assert_eq!(deliver(&app, "evt_while_redis_is_down").await, StatusCode::OK);

    redis.resume_service();
    let back = Instant::now();
    health_passes_within(&app, Duration::from_secs(10)).await;
    eprintln!(
        "RELIABILITY redis: /health passed {:?} after Redis returned",
        back.elapsed()
    );
}

#[tokio::test]
async fn a_frozen_postgres_gets_fast_503s_and_everything_recovers_after_sigcont() {
    let postgres = private_postgres().await;
    let url = format!("{}/keel_frozen", postgres.url());
    let app = spawn_app_with(|env| {
        env.insert("DATABASE_URL", url);
    })
    .await;
    let mut member = signed_up(&app, "frozen@example.com").await;
    assert_eq!(member.get("/dashboard").await.status, StatusCode::OK);

    postgres.freeze();
    // Past the 1 s for which a health result is reused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let (status, report) = health(&app).await;
    let health_took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{report}");
    assert_eq!(report["checks"]["postgres:responseTime"][0]["status"], "fail");
    assert!(
        health_took < Duration::from_millis(2500),
        "/health took {health_took:?}"
    );

    // A page that needs no database still answers at once.
    let started = Instant::now();
    assert_eq!(app.get("/").await.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
    // One that does gets the 503 page within the request timeout (30 s), never hangs.
    let started = Instant::now();
    let page = member.get("/dashboard").await;
    let page_took = started.elapsed();
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{}", page.body);
    assert!(
        page_took < Duration::from_secs(32),
        "/dashboard took {page_took:?}"
    );

    postgres.thaw();
    let thawed = Instant::now();
    let cookie = member.cookie_header();
    wait_until("/dashboard to answer again", Duration::from_secs(15), || async {
        let response = app
            .client
            .get(app.url("/dashboard"))
            .header("cookie", &cookie)
            .send()
            .await;
        match response.map(|r| r.status()) {
            Ok(StatusCode::OK) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let recovered = thawed.elapsed();
    health_passes_within(&app, Duration::from_secs(5)).await;
    eprintln!(
        "RELIABILITY frozen postgres: /health 503 in {health_took:?}, /dashboard 503 in {page_took:?}, /dashboard 200 again {recovered:?} after SIGCONT"
    );
}

#[tokio::test]
async fn webhooks_during_a_postgres_restart_get_503_and_none_acknowledged_is_lost() {
    let postgres = private_postgres().await;
    let url = format!("{}/keel_restarted", postgres.url());
    let app = Arc::new(
        spawn_app_with(|env| {
            env.insert("DATABASE_URL", url);
            env.insert("STRIPE_WEBHOOK_SECRET", SECRET.into());
        })
        .await,
    );

    // Four senders deliver distinct events until told to stop, recording every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(String, StatusCode, Duration)>::new()));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (app, stop, answers) = (app.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("evt_restart_{sender}_{n}");
                    let started = Instant::now();
                    let status = deliver(&app, &id).await;
                    answers.lock().unwrap().push((id, status, started.elapsed()));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = postgres.clone();
    let outage = Instant::now();
    tokio::task::spawn_blocking(move || {
        restarted.stop("fast");
        // Longer than the pool's 3 s acquire timeout: deliveries meanwhile must be refused.
        std::thread::sleep(Duration::from_secs(4));
        restarted.resume_service();
    })
    .await
    .unwrap();
    let server_back = outage.elapsed();
    // The pool finds its way back by itself: a delivery succeeds again.
    let back = Instant::now();
    wait_until("a delivery to succeed again", Duration::from_secs(10), || async {
        match deliver(&app, &format!("evt_probe_{}", uuid::Uuid::new_v4().simple())).await {
            StatusCode::OK => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let recovered = back.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    let answers = answers.lock().unwrap().clone();
    let acknowledged: Vec<&String> = answers
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::OK)
        .map(|(id, _, _)| id)
        .collect();
    let refused = answers
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let others: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::OK && *status != StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(others.is_empty(), "answers other than 200 and 503: {others:?}");
    assert!(refused > 0, "no delivery met the outage: the test tested nothing");
    let slowest = answers.iter().map(|(_, _, took)| *took).max().unwrap();
    assert!(slowest < Duration::from_secs(10), "a delivery waited {slowest:?}");

    let db = sqlx::PgPool::connect(&format!("{}/keel_restarted", postgres.url()))
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM stripe_events")
        .fetch_all(&db)
        .await
        .unwrap();
    let lost: Vec<_> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events e
         WHERE processed_at IS NOT NULL
            OR EXISTS (SELECT 1 FROM jobs j WHERE j.payload->>'event_id' = e.id)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        jobs as usize,
        stored.len(),
        "every stored event is processed or queued"
    );
    db.close().await;
    eprintln!(
        "RELIABILITY postgres restart: {} deliveries, {} acknowledged (all stored), {refused} answered 503; server back after {server_back:?}, deliveries succeed again {recovered:?} later; slowest answer {slowest:?}",
        answers.len(),
        acknowledged.len()
    );
}

/// `keel ARGS…` as a child process of the test, killed (SIGKILL) on drop.
fn start_keel(args: &[&str], env: &[(&'static str, String)]) -> ChildGuard {
    let child = crate::helpers::keel_command(args, env.iter().cloned())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("keel starts");
    ChildGuard(child)
}

/// invoice.payment_failed (the shared basil event) for invoice `n` of `sub_kill`: each asks
/// for one dunning email, `dunning:in_kill_<n>:1`.
fn payment_failed(n: usize) -> (String, String) {
    let path = format!(
        "{}/../shared/stripe/events/invoice.payment_failed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut event: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    event["id"] = json!(format!("evt_kill_{n}"));
    event["created"] = json!(time::OffsetDateTime::now_utc().unix_timestamp());
    let invoice = &mut event["data"]["object"];
    invoice["id"] = json!(format!("in_kill_{n}"));
    invoice["parent"]["subscription_details"]["subscription"] = json!("sub_kill");
    let body = event.to_string();
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    (
        body,
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes())),
    )
}

async fn deliver_to(client: &reqwest::Client, base: &str, n: usize) -> bool {
    let (body, signature) = payment_failed(n);
    client
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

async fn wait_live(client: &reqwest::Client, base: &str) {
    wait_until("keel to be live", Duration::from_secs(30), || async {
        match client.get(format!("{base}/health/live")).send().await {
            Ok(r) if r.status() == StatusCode::OK => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status()))),
        }
    })
    .await;
}

/// The whole app process killed with SIGKILL while it stores webhook events and sends their
/// emails; a web process and two workers take over. Every event is processed and every email
/// reaches the SMTP server, under one Message-ID each (see docs/RELIABILITY.md for the copies
/// a crash between the server's acceptance and the commit leaves).
// Multi-threaded, so that the tests' SMTP server answers while the test itself waits (as a
// real one would): on one thread it would sit on messages the killed process had sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_webhooks_and_emails_in_flight_loses_nothing() {
    const EVENTS: usize = 40;
    let smtp = crate::smtp_server::FakeSmtp::start(crate::smtp_server::Behaviour::default()).await;
    let database = crate::helpers::DatabaseGuard::new(crate::helpers::unique_database_name());
    let env = |port: u16| -> Vec<(&'static str, String)> {
        vec![
            ("APP_ENV", "development".to_owned()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("DATABASE_URL", database.url()),
            ("REDIS_URL", crate::helpers::redis_url()),
            ("SMTP_URL", smtp.url()),
            ("STRIPE_WEBHOOK_SECRET", SECRET.to_owned()),
        ]
    };
    let client = crate::helpers::client();
    let first_port = free_port();
    let first_base = format!("http://127.0.0.1:{first_port}");
    let mut first = start_keel(&["serve"], &env(first_port));
    wait_live(&client, &first_base).await;

    let db = sqlx::PgPool::connect(&database.url()).await.unwrap();
    for statement in [
        "INSERT INTO users (id, email, password_hash) VALUES ('00000000-0000-4000-8000-000000000001', 'owner@example.com', 'x')",
        "INSERT INTO teams (id, name) VALUES ('00000000-0000-4000-8000-000000000002', 'Killed')",
        "INSERT INTO memberships (team_id, user_id, role) VALUES ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'owner')",
        "INSERT INTO subscriptions (id, team_id, customer_id, status, state_as_of)
         VALUES ('sub_kill', '00000000-0000-4000-8000-000000000002', 'cus_kill', 'past_due', now())",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }

    // Deliveries, and SIGKILL as soon as the first email is out: deliveries, processing jobs
    // and email jobs are all under way.
    let mut acknowledged = [false; EVENTS];
    for (n, acked) in acknowledged.iter_mut().enumerate() {
        *acked = deliver_to(&client, &first_base, n).await;
        if !smtp.accepted().is_empty() {
            break;
        }
    }
    wait_until("the first email", Duration::from_secs(20), || async {
        if smtp.accepted().is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    first.kill_9();
    let killed_with = (acknowledged.iter().filter(|a| **a).count(), smtp.accepted().len());
    assert!(
        killed_with.1 < EVENTS,
        "killed with emails left to send: {killed_with:?}"
    );

    // A web process and two workers take over; Stripe redelivers what was not acknowledged.
    let second_port = free_port();
    let second_base = format!("http://127.0.0.1:{second_port}");
    let _web = start_keel(&["serve", "--no-worker"], &env(second_port));
    let _workers = [
        start_keel(&["worker"], &env(free_port())),
        start_keel(&["worker"], &env(free_port())),
    ];
    wait_live(&client, &second_base).await;
    for (n, acked) in acknowledged.iter().enumerate() {
        if !acked {
            assert!(deliver_to(&client, &second_base, n).await, "redelivery {n}");
        }
    }

    // A killed worker's jobs come back when their 60 s lease runs out.
    let started = Instant::now();
    wait_until(
        "every event processed and every email sent",
        Duration::from_secs(100),
        || async {
            let processed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE processed_at IS NOT NULL")
                    .fetch_one(&db)
                    .await
                    .unwrap();
            let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'sent'")
                .fetch_one(&db)
                .await
                .unwrap();
            if processed as usize == EVENTS && sent as usize == EVENTS {
                Ok(())
            } else {
                Err(format!("{processed} processed, {sent} sent"))
            }
        },
    )
    .await;
    // Every email reached the server, under one Message-ID each. One the killed process had
    // handed to the server but not yet marked sent is sent again, with the same Message-ID
    // (receivers drop the copy): SMTP has no way to ask whether a message arrived.
    let accepted = smtp.accepted();
    let messages: std::collections::HashSet<_> = accepted.iter().map(|a| a.message_id.clone()).collect();
    assert_eq!(messages.len(), EVENTS, "one email per event");
    assert!(
        accepted.len() - EVENTS <= 4,
        "more copies ({}) than deliveries the killed process had in flight (4)",
        accepted.len() - EVENTS
    );
    let emails: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(emails as usize, EVENTS, "one email queued per (invoice, attempt)");
    db.close().await;
    eprintln!(
        "RELIABILITY kill -9: killed with {} events acknowledged and {} emails out; all {EVENTS} processed and sent {:?} after the takeover; {} messages accepted for {} Message-IDs",
        killed_with.0,
        killed_with.1,
        started.elapsed(),
        accepted.len(),
        messages.len()
    );
}

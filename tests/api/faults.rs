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
    helpers::{TestApp, spawn_app_with, wait_until},
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

async fn signed_up<'a>(app: &'a TestApp, email: &str) -> Visitor<'a> {
    let mut visitor = Visitor::new(app);
    let page = visitor
        .submit("/signup", "/signup", &[("email", email), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    visitor
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
    wait_until("/health to pass again", Duration::from_secs(10), || async {
        let (status, _) = health(&app).await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
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
    wait_until("/health to pass again", Duration::from_secs(5), || async {
        let (status, _) = health(&app).await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
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

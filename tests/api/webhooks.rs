//! `POST /webhooks/stripe`: signed with the real recipe, using the shared Stripe events.

use std::time::Duration;

use futures_util::future::join_all;
use hmac::{KeyInit as _, Mac as _};
use reqwest::StatusCode;

use crate::helpers::{
    TcpProxy, TestApp, database_server_url_via, database_socket_addr, spawn_app_with, spawn_web_only_with,
};

const SECRET: &str = "whsec_test_secret_for_keel";

fn fixture_event(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/stripe/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A `Stripe-Signature` header as Stripe writes it.
fn signature(secret: &str, body: &[u8], t: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The web side only (`serve --no-worker`): what a delivery stores and queues stays visible.
/// Processing is tested in `billing.rs`.
async fn app_with_secret(secret: &str) -> TestApp {
    let secret = secret.to_owned();
    spawn_web_only_with(|env| {
        env.insert("STRIPE_WEBHOOK_SECRET", secret);
        // Webhooks are not under the site's per-client limit.
        env.insert("RATE_LIMIT_BURST", "2".into());
        env.insert("RATE_LIMIT_PER_SECOND", "1".into());
    })
    .await
}

async fn deliver(app: &TestApp, body: &[u8], header: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_vec());
    if let Some(header) = header {
        request = request.header("stripe-signature", header);
    }
    request.send().await.expect("delivered")
}

async fn stored(app: &TestApp) -> (i64, i64) {
    let mut db = app.database.connect().await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'stripe.process_event'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    (events, jobs)
}

#[tokio::test]
async fn a_signed_event_is_stored_with_its_processing_job_and_a_redelivery_changes_nothing() {
    let app = app_with_secret(SECRET).await;
    let body = fixture_event("checkout.session.completed.json");
    for _ in 0..3 {
        let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap()["received"],
            true
        );
    }
    assert_eq!(stored(&app).await, (1, 1), "one event, one job");

    let mut db = app.database.connect().await;
    let (id, kind, payload, processed): (String, String, String, Option<time::OffsetDateTime>) =
        sqlx::query_as("SELECT id, type, payload, processed_at FROM stripe_events")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(id.starts_with("evt_"));
    assert_eq!(kind, "checkout.session.completed");
    assert_eq!(payload.as_bytes(), body.as_slice(), "the body exactly as signed");
    assert_eq!(processed, None);
    let job: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM jobs WHERE kind = 'stripe.process_event'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(job["event_id"], id.as_str());
}

#[tokio::test]
async fn concurrent_deliveries_of_one_event_store_it_once() {
    let app = app_with_secret(SECRET).await;
    let body = fixture_event("invoice.payment_failed.json");
    let header = signature(SECRET, &body, now());
    let responses = join_all((0..12).map(|_| deliver(&app, &body, Some(&header)))).await;
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(stored(&app).await, (1, 1));
}

#[tokio::test]
async fn every_fixture_event_in_both_api_shapes_and_unknown_types_are_acknowledged() {
    let app = app_with_secret(SECRET).await;
    let mut sent = 0;
    for dir in ["", "legacy_2025-02-24.acacia/"] {
        let folder = format!(
            "{}/tests/fixtures/stripe/events/{dir}",
            env!("CARGO_MANIFEST_DIR")
        );
        for entry in std::fs::read_dir(folder).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".json") || name.starts_with('_') {
                continue;
            }
            let body = fixture_event(&format!("{dir}{name}"));
            let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
            assert_eq!(response.status(), StatusCode::OK, "{dir}{name}");
            sent += 1;
        }
    }
    let unknown = br#"{"id":"evt_brandnew1","object":"event","type":"billing.brand_new","created":1763769600,"data":{"object":{}}}"#;
    let response = deliver(&app, unknown, Some(&signature(SECRET, unknown, now()))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (events, jobs) = stored(&app).await;
    assert!(events >= 12 && events <= sent + 1, "{events} of {sent}");
    assert_eq!(events, jobs);
}

#[tokio::test]
async fn a_bad_signature_is_400_and_nothing_is_stored() {
    let app = app_with_secret(SECRET).await;
    let body = fixture_event("customer.subscription.updated.json");
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'1').unwrap();
    tampered[at] = b'2';
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("no header", body.clone(), None),
        (
            "another secret",
            body.clone(),
            Some(signature("whsec_other", &body, now())),
        ),
        (
            "tampered body",
            tampered.clone(),
            Some(signature(SECRET, &body, now())),
        ),
        (
            "301 s old",
            body.clone(),
            Some(signature(SECRET, &body, now() - 301)),
        ),
        ("garbage", body.clone(), Some("t=abc,v1=zz".to_owned())),
    ];
    for (what, body, header) in cases {
        let response = deliver(&app, &body, header.as_deref()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains("signature"),
            "{what}: {error}"
        );
    }
    assert_eq!(stored(&app).await, (0, 0));
}

#[tokio::test]
async fn during_a_secret_rotation_both_secrets_are_accepted() {
    let app = app_with_secret("whsec_old_one,whsec_new_one").await;
    let first = fixture_event("customer.updated.json");
    let second = fixture_event("customer.deleted.json");
    let old = deliver(&app, &first, Some(&signature("whsec_old_one", &first, now()))).await;
    assert_eq!(old.status(), StatusCode::OK);
    // Stripe signs with every active secret while one is rolled: one v1 each.
    let both = format!(
        "{},v1={}",
        signature("whsec_new_one", &second, now()),
        signature("whsec_old_one", &second, now())
            .rsplit("v1=")
            .next()
            .unwrap()
    );
    assert_eq!(deliver(&app, &second, Some(&both)).await.status(), StatusCode::OK);
    assert_eq!(stored(&app).await, (2, 2));
}

#[tokio::test]
async fn a_verified_body_that_is_not_an_event_is_400() {
    let app = app_with_secret(SECRET).await;
    for body in [
        &b"not json at all"[..],
        br#"{"id":"evt_thin1","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":1}"#,
        br#"{"id":"cus_1","object":"event","type":"x","created":1}"#,
    ] {
        let response = deliver(&app, body, Some(&signature(SECRET, body, now()))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(stored(&app).await, (0, 0));
}

#[tokio::test]
async fn without_a_secret_the_webhook_answers_503_so_stripe_retries() {
    let app = spawn_app_with(|_| {}).await;
    let body = fixture_event("invoice.paid.json");
    let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = app_with_secret(SECRET).await;
    let body = vec![b' '; 1024 * 1024 + 1];
    let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Up to the limit is read (and here refused as not an event, not as too large).
    let body = vec![b' '; 1024 * 1024];
    let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn with_the_database_down_the_webhook_answers_503_quickly_so_stripe_retries() {
    let proxy = TcpProxy::start(database_socket_addr()).await;
    let via = database_server_url_via(proxy.addr);
    let app = spawn_app_with(|env| {
        let database = env["DATABASE_URL"].rsplit('/').next().unwrap().to_owned();
        env.insert("DATABASE_URL", format!("{via}/{database}"));
        env.insert("STRIPE_WEBHOOK_SECRET", SECRET.into());
    })
    .await;
    proxy.kill();
    let body = fixture_event("invoice.payment_failed.json");
    let started = std::time::Instant::now();
    let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let mut db = app.database.connect().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing acknowledged, nothing stored");
}

/// Ingest wakes the workers after its commit (jobs::Waker), not from inside its transaction
/// (the trigger's NOTIFY would make concurrent deliveries commit one at a time): a listening
/// worker hears of each stored event at once, and of a redelivery not at all.
#[tokio::test]
async fn a_stored_event_wakes_the_workers_after_its_commit() {
    let app = app_with_secret(SECRET).await;
    let mut listener = sqlx::postgres::PgListener::connect(&app.database.url())
        .await
        .unwrap();
    listener.listen("keel_jobs").await.unwrap();
    let body = fixture_event("invoice.paid.json");
    let response = deliver(&app, &body, Some(&signature(SECRET, &body, now()))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
    assert!(
        heard.is_ok_and(|n| n.is_ok()),
        "no notification within 1 s of the delivery"
    );

    // Nothing in the statement's own transaction notified: only the waker's one arrived.
    let again = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(again.is_err(), "a second notification: {again:?}");
    // Other enqueues still notify from the trigger.
    let mut db = app.database.connect().await;
    sqlx::query("INSERT INTO jobs (kind, payload, max_attempts) VALUES ('test.other', '{}', 1)")
        .execute(&mut db)
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
    assert!(heard.is_ok_and(|n| n.is_ok()), "the trigger no longer notifies");
}

/// An event Stripe signed that processing can never read (data nested past serde_json's
/// recursion limit of 128) is acknowledged, and its job is dead after one attempt, not 25
/// spread over three days.
#[tokio::test]
async fn an_event_processing_can_never_read_is_not_retried() {
    let app = spawn_app_with(|env| {
        env.insert("STRIPE_WEBHOOK_SECRET", SECRET.to_owned());
    })
    .await;
    let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"id":"evt_too_deep","object":"event","api_version":"2024-06-20","type":"customer.subscription.updated","created":{},"livemode":false,"data":{{"object":{nested}}}}}"#,
        now()
    );
    let response = deliver(
        &app,
        body.as_bytes(),
        Some(&signature(SECRET, body.as_bytes(), now())),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    crate::helpers::wait_until("the job to end", Duration::from_secs(10), || async {
        {
            let mut db = app.database.connect().await;
            let (status, attempts, error): (String, i32, Option<String>) = sqlx::query_as(
                "SELECT status, attempts, last_error FROM jobs WHERE kind = 'stripe.process_event'",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            match status.as_str() {
                "dead" => {
                    assert_eq!(attempts, 1, "{error:?}");
                    let error = error.unwrap_or_default();
                    assert!(
                        error.contains("evt_too_deep cannot be read") && error.contains("permanent"),
                        "{error}"
                    );
                    Ok(())
                }
                _ => Err(format!("{status} after {attempts} attempts: {error:?}")),
            }
        }
    })
    .await;
}

//! `/health` and `/health/live` as SPEC.md describes them.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{
    TcpProxy, database_server_url_via, database_socket_addr, json, spawn_app, spawn_app_with,
};

const POSTGRES: &str = "postgres:responseTime";
const REDIS: &str = "redis:responseTime";

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    let entries = body["checks"][name]
        .as_array()
        .unwrap_or_else(|| panic!("{name} in {body}"));
    assert_eq!(entries.len(), 1, "{name}: {body}");
    &entries[0]
}

#[tokio::test]
async fn health_passes_when_postgres_and_redis_answer() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/health+json");
    let body = json(response).await;
    assert_eq!(body["status"], "pass");
    assert_eq!(body["version"], "1");
    assert_eq!(body["releaseId"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["serviceId"], "keel");
    for name in [POSTGRES, REDIS] {
        let check = check(&body, name);
        assert_eq!(check["componentType"], "datastore");
        assert_eq!(check["observedUnit"], "ms");
        assert_eq!(check["status"], "pass");
        assert!(check["observedValue"].as_f64().unwrap() >= 0.0);
        assert!(check["time"].as_str().unwrap().ends_with('Z'));
        assert!(check.get("output").is_none(), "{check}");
    }
    let uptime = check(&body, "uptime");
    assert_eq!(uptime["componentType"], "system");
    assert_eq!(uptime["observedUnit"], "s");
    assert!(uptime["observedValue"].is_u64());
}

#[tokio::test]
async fn health_fails_with_a_reason_when_redis_is_down() {
    // Nothing listens on port 1: connections are refused at once.
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL", "redis://127.0.0.1:1".to_owned());
    })
    .await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/health+json");
    let body = json(response).await;
    assert_eq!(body["status"], "fail");
    let redis = check(&body, REDIS);
    assert_eq!(redis["status"], "fail");
    assert!(!redis["output"].as_str().unwrap().is_empty(), "{redis}");
    assert_eq!(check(&body, POSTGRES)["status"], "pass");

    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "application/health+json");
    assert_eq!(json(live).await, serde_json::json!({"status": "pass"}));
}

/// The app reaches PostgreSQL through a proxy the test controls.
async fn spawn_app_behind_proxy() -> (crate::helpers::TestApp, TcpProxy) {
    let proxy = TcpProxy::start(database_socket_addr()).await;
    let via = database_server_url_via(proxy.addr);
    let app = spawn_app_with(|env| {
        let database = env["DATABASE_URL"].rsplit('/').next().unwrap().to_owned();
        env.insert("DATABASE_URL", format!("{via}/{database}"));
    })
    .await;
    assert_eq!(app.get("/health").await.status(), 200, "healthy before the fault");
    (app, proxy)
}

async fn timed_health(app: &crate::helpers::TestApp) -> (Duration, u16, Value) {
    let started = Instant::now();
    let response = app.get("/health").await;
    let status = response.status().as_u16();
    let body = json(response).await;
    (started.elapsed(), status, body)
}

#[tokio::test]
async fn a_hung_postgres_makes_health_fail_in_about_a_second() {
    let (app, proxy) = spawn_app_behind_proxy().await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the reuse window

    let (elapsed, status, body) = timed_health(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "answered before the timeout: {elapsed:?}"
    );
    assert_eq!(body["status"], "fail");
    let postgres = check(&body, POSTGRES);
    assert_eq!(postgres["status"], "fail");
    assert_eq!(postgres["output"], "no answer within 1000 ms");
    assert_eq!(check(&body, REDIS)["status"], "pass");

    let started = Instant::now();
    assert_eq!(app.get("/health/live").await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn an_unreachable_postgres_makes_health_fail_fast() {
    let (app, proxy) = spawn_app_behind_proxy().await;
    proxy.kill();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (elapsed, status, body) = timed_health(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    let postgres = check(&body, POSTGRES);
    assert_eq!(postgres["status"], "fail");
    assert!(!postgres["output"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_requests_share_one_check_while_postgres_hangs() {
    let (app, proxy) = spawn_app_behind_proxy().await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let requests = (0..20).map(|_| timed_health(&app));
    let results = join_all(requests).await;
    // Twenty checks queued one after another would take twenty seconds.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    let times: Vec<&Value> = results
        .iter()
        .map(|(_, _, body)| &check(body, POSTGRES)["time"])
        .collect();
    assert!(results.iter().all(|(_, status, _)| *status == 503));
    assert!(
        times.iter().all(|t| *t == times[0]),
        "one shared check: {times:?}"
    );
}

#[tokio::test]
async fn a_result_is_reused_for_at_most_a_second() {
    let app = spawn_app().await;
    let first = json(app.get("/health").await).await;
    let again = json(app.get("/health").await).await;
    assert_eq!(check(&first, POSTGRES)["time"], check(&again, POSTGRES)["time"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = json(app.get("/health").await).await;
    assert_ne!(check(&first, POSTGRES)["time"], check(&later, POSTGRES)["time"]);
}

//! Per-client rate limiting: burst, 429 + Retry-After, the client-address rule, probe exemption.

use crate::helpers::{TestApp, spawn_app_with};

/// An app allowing `burst` requests at once, refilled at one per second.
async fn app_with_burst(burst: u32, trusted_proxies: Option<&str>) -> TestApp {
    spawn_app_with(|env| {
        env.insert("RATE_LIMIT_PER_SECOND", "1".to_owned());
        env.insert("RATE_LIMIT_BURST", burst.to_string());
        if let Some(cidrs) = trusted_proxies {
            env.insert("TRUSTED_PROXIES", cidrs.to_owned());
        }
    })
    .await
}

async fn get_as(app: &TestApp, forwarded_for: &str) -> u16 {
    let response = app
        .client
        .get(app.url("/"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn a_client_over_its_burst_gets_429_with_retry_after() {
    let app = app_with_burst(3, None).await;
    for _ in 0..3 {
        assert_eq!(app.get("/").await.status(), 200);
    }
    let limited = app.get("/pricing").await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(
        limited.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(limited.text().await.unwrap().contains("Too many requests"));

    // Unknown routes count too: a scanner cannot probe for free.
    assert_eq!(app.get("/wp-login.php").await.status(), 429);
}

#[tokio::test]
async fn health_probes_are_never_rate_limited() {
    let app = app_with_burst(1, None).await;
    assert_eq!(app.get("/").await.status(), 200);
    assert_eq!(app.get("/").await.status(), 429);
    for _ in 0..20 {
        assert_eq!(app.get("/health/live").await.status(), 200);
        assert_eq!(app.get("/health").await.status(), 200);
    }
}

#[tokio::test]
async fn a_forged_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = app_with_burst(2, None).await;
    assert_eq!(get_as(&app, "198.51.100.1").await, 200);
    assert_eq!(get_as(&app, "198.51.100.2").await, 200);
    // A third "client" is still the same TCP peer, and its bucket is empty.
    assert_eq!(get_as(&app, "198.51.100.3").await, 429);
    assert_eq!(get_as(&app, "garbage, 10.9.9.9").await, 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_untrusted_address_is_the_client() {
    // The test client connects from 127.0.0.1: here that is "nginx".
    let app = app_with_burst(2, Some("127.0.0.1/32")).await;
    // Client A, with a forged left-most entry, as nginx's $proxy_add_x_forwarded_for writes it.
    assert_eq!(get_as(&app, "6.6.6.6, 198.51.100.1").await, 200);
    assert_eq!(get_as(&app, "7.7.7.7, 198.51.100.1").await, 200);
    assert_eq!(get_as(&app, "198.51.100.1").await, 429);
    // Client B has its own bucket, even when it claims to be A in the forgeable part.
    assert_eq!(get_as(&app, "198.51.100.2").await, 200);
    assert_eq!(get_as(&app, "198.51.100.1, 198.51.100.2").await, 200);
    assert_eq!(get_as(&app, "198.51.100.2").await, 429);
}

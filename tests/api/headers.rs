//! Security headers and request ids on every kind of response.

use crate::helpers::{spawn_app, spawn_app_with};

fn assert_security_headers(response: &reqwest::Response, https: bool) {
    let headers = response.headers();
    let what = format!("{} {}", response.status(), response.url().path());
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert!(headers.contains_key("referrer-policy"), "{what}");
    let request_id = headers["x-request-id"].to_str().unwrap();
    assert!(!request_id.is_empty(), "{what}");
    assert_eq!(headers.contains_key("strict-transport-security"), https, "{what}");
}

#[tokio::test]
async fn every_response_carries_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    let responses = [
        app.get("/").await,
        app.get("/pricing").await,
        app.get("/health").await,
        app.get("/health/live").await,
        app.get("/no/such/page").await,
        app.client.delete(app.url("/pricing")).send().await.unwrap(),
    ];
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404, 405]);
    for response in &responses {
        assert_security_headers(response, false);
    }
}

#[tokio::test]
async fn a_rate_limited_response_carries_them_too() {
    let app = spawn_app_with(|env| {
        env.insert("RATE_LIMIT_PER_SECOND", "1".to_owned());
        env.insert("RATE_LIMIT_BURST", "1".to_owned());
    })
    .await;
    assert_eq!(app.get("/").await.status(), 200);
    let limited = app.get("/").await;
    assert_eq!(limited.status(), 429);
    assert_security_headers(&limited, false);
}

#[tokio::test]
async fn hsts_is_sent_only_when_base_url_is_https() {
    let app = spawn_app_with(|env| {
        env.insert("BASE_URL", "https://app.example.com".to_owned());
    })
    .await;
    for path in ["/", "/missing", "/health"] {
        let response = app.get(path).await;
        assert_security_headers(&response, true);
        let hsts = response.headers()["strict-transport-security"].to_str().unwrap();
        assert!(hsts.starts_with("max-age="), "{hsts}");
    }
}

#[tokio::test]
async fn a_request_id_is_echoed_or_else_generated() {
    let app = spawn_app().await;
    let echoed = app
        .client
        .get(app.url("/"))
        .header("x-request-id", "nginx-4f2a.9_b")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "nginx-4f2a.9_b");

    let first = app.get("/").await.headers()["x-request-id"].clone();
    let second = app.get("/").await.headers()["x-request-id"].clone();
    assert_ne!(first, second);
    assert!(
        uuid::Uuid::parse_str(first.to_str().unwrap()).is_ok(),
        "{first:?}"
    );

    // Ids that could smuggle text into logs are replaced, not echoed.
    for hostile in ["a b", "x\"}{\"level\":\"error", &"a".repeat(65)] {
        let response = app
            .client
            .get(app.url("/"))
            .header("x-request-id", hostile)
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, hostile);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}

#[tokio::test]
async fn no_page_may_be_cached_but_the_fingerprinted_assets() {
    let app = spawn_app().await;
    let mut visitor = crate::visitor::Visitor::signed_up(&app, "cache@example.com", "a fine password").await;
    for path in [
        "/dashboard",
        "/settings",
        "/billing",
        "/",
        "/login",
        "/no/such/page",
    ] {
        let page = visitor.get(path).await;
        assert_eq!(
            page.headers["cache-control"], "no-store",
            "{path}: {}",
            page.status
        );
    }
    let home = app.get("/").await.text().await.unwrap();
    let start = home.find("/static/").expect("an asset on the home page");
    let asset: String = home[start..].chars().take_while(|c| *c != '"').collect();
    let response = app.get(&asset).await;
    assert_eq!(response.status(), 200, "{asset}");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
}

//! `GET /metrics`: Prometheus text, per-route counts and latencies, and who may read it.

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn metrics_count_requests_by_route_template_in_development() {
    let app = spawn_app().await;
    assert_eq!(app.get("/").await.status(), 200);
    assert_eq!(app.get("/static/nothing.css").await.status(), 404);
    assert_eq!(app.get("/wp-admin/setup.php").await.status(), 404);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"keel_http_requests_total{method="GET",route="/",status="200"} "#),
        "{text}"
    );
    assert!(text.contains(r#"route="/static/{file}",status="404""#), "{text}");
    // Unknown paths share one label value, so scanners cannot grow the series without bound.
    assert!(
        text.contains(r#"keel_http_requests_total{method="GET",route="unmatched",status="404"} "#),
        "{text}"
    );
    assert!(!text.contains("wp-admin"), "{text}");
    // So do methods outside the standard ones.
    let made_up = reqwest::Method::from_bytes(b"SCAN-4f9c2").unwrap();
    let response = app.client.request(made_up, app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"keel_http_requests_total{method="OTHER",route="/",status="405"} "#),
        "{text}"
    );
    assert!(!text.contains("SCAN-4f9c2"), "{text}");
    assert!(
        text.contains(r#"keel_http_request_duration_seconds_bucket{method="GET",route="/",le="0.005"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn with_a_token_only_its_bearer_may_read_metrics() {
    let token = "metrics-token-0123456789abcdef";
    let app = spawn_app_with(|env| {
        env.insert("METRICS_TOKEN", token.to_owned());
    })
    .await;
    let get = |auth: Option<&str>| {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let anonymous = get(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get(Some("Bearer wrong-token-0123456789abcde"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(get(Some(&format!("Basic {token}"))).await.unwrap().status(), 401);
    let allowed = get(Some(&format!("Bearer {token}"))).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("keel_http_requests_total"));
}

#[tokio::test]
async fn production_without_a_token_answers_404() {
    let app = crate::helpers::spawn_production_app().await;
    assert_eq!(app.get("/metrics").await.status(), 404);
    assert_eq!(app.get("/").await.status(), 200);
}

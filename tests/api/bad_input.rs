//! Bad input of any kind gets a clear 4xx page or JSON error: never a 500, never a panic.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{TestApp, spawn_app};

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.get(path).await.status().as_u16()
}

#[tokio::test]
async fn an_unknown_route_gets_a_404_page_in_the_site_layout() {
    let app = spawn_app().await;
    let response = app.get("/no/such/page").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let page = response.text().await.unwrap();
    assert!(page.contains("Not Found"), "{page}");
    assert!(
        page.contains("/static/app."),
        "the error page uses the site layout"
    );
}

#[tokio::test]
async fn json_clients_get_json_errors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/no/such/page"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], 404);
    assert_eq!(body["error"]["title"], "Not Found");
    assert!(body["error"]["message"].as_str().is_some());
}

#[tokio::test]
async fn a_wrong_method_gets_405_naming_the_allowed_ones() {
    let app = spawn_app().await;
    for (method, path, allowed) in [
        ("POST", "/", "GET"),
        ("PUT", "/pricing", "GET"),
        ("DELETE", "/health", "GET"),
        ("PATCH", "/static/x.css", "GET"),
        // Behind login, for someone not signed in: still 405, not a redirect to log in.
        ("PUT", "/dashboard", "GET"),
        ("DELETE", "/billing/checkout", "POST"),
    ] {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains(allowed), "{method} {path}: {allow}");
        assert!(response.text().await.unwrap().contains("Method Not Allowed"));
    }
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let app = spawn_app().await;
    let body = vec![b'a'; 64 * 1024 + 1];
    let response = app
        .client
        .post(app.url("/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.text().await.unwrap().contains("too large"));
}

#[tokio::test]
async fn malformed_paths_and_queries_get_4xx_never_5xx() {
    let app = spawn_app().await;
    for path in [
        "/static/%FF%FE.css", // invalid UTF-8 after percent-decoding
        "/static/%00",        // NUL
        "/static/..%2F..%2Fetc%2Fpasswd",
        "/static/../Cargo.toml",
        "/static/app.css", // not a fingerprinted name
        "/%ZZ",            // not percent-encoding at all
        "/%C0%AF",         // overlong UTF-8
        "/pricing/%FF",
    ] {
        let status = status_of(&app, path).await;
        assert!((400..500).contains(&status), "{path} → {status}");
    }
    // Pages that read no query ignore a malformed one.
    for path in ["/?%FF=%FE", "/pricing?plan=%ZZ&&=&%00"] {
        let status = status_of(&app, path).await;
        assert!(status < 500, "{path} → {status}");
    }
}

#[tokio::test]
async fn raw_invalid_bytes_in_the_request_line_get_400() {
    let app = spawn_app().await;
    for request in [
        &b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\nConnection: close\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?} → {answer}");
    }
    // The server is still up.
    assert_eq!(status_of(&app, "/health/live").await, 200);
}

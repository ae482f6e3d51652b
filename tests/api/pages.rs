//! Public pages and the static assets they link.

use crate::helpers::{spawn_app, spawn_app_with};

/// The fingerprinted URLs a page links to under /static/.
fn static_links(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|part| part.starts_with("/static/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_landing_page_renders_without_inline_script_or_style() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"));
    for link in ["href=\"/signup\"", "href=\"/login\"", "href=\"/pricing\""] {
        assert!(page.contains(link), "{link}");
    }
    // The CSP forbids inline code: the page must not need any.
    assert!(!page.contains("<script"), "no script at all");
    assert!(!page.contains("style="), "no inline style");
    assert!(!page.contains("<style"), "no style element");
}

#[tokio::test]
async fn linked_assets_are_served_with_an_immutable_cache() {
    let app = spawn_app().await;
    let page = app.get("/").await.text().await.unwrap();
    let links = static_links(&page);
    assert!(links.iter().any(|l| l.ends_with(".css")), "{links:?}");
    assert!(links.iter().any(|l| l.ends_with(".svg")), "{links:?}");
    for link in links {
        let response = app.get(&link).await;
        assert_eq!(response.status(), 200, "{link}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let expected = if link.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "image/svg+xml"
        };
        assert_eq!(response.headers()["content-type"], expected);
        assert!(!response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn html_and_css_are_compressed_for_clients_that_accept_gzip() {
    let app = spawn_app().await;
    let page = app.get("/").await.text().await.unwrap();
    let css = static_links(&page)
        .into_iter()
        .find(|l| l.ends_with(".css"))
        .unwrap();
    for path in ["/", css.as_str()] {
        let response = app
            .client
            .get(app.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-encoding"], "gzip", "{path}");
    }
}

#[tokio::test]
async fn pricing_lists_the_plans_of_stripe_prices() {
    let app = spawn_app_with(|env| {
        env.insert("STRIPE_PRICES", "pro=price_123,team_plus=price_456".to_owned());
    })
    .await;
    let page = app.get("/pricing").await.text().await.unwrap();
    assert!(page.contains("Choose Pro"), "{page}");
    assert!(page.contains("Choose Team plus"));
    // Visitors sign up first and come back to the plans; each plan has its button.
    assert_eq!(
        page.matches("href=\"/signup?next=/pricing\"").count(),
        2,
        "{page}"
    );
    // Without STRIPE_SECRET_KEY there are no amounts to show: the names alone.
    assert_eq!(page.matches("Price shown at checkout").count(), 2);
    assert!(!page.contains("price_123"), "price ids are not shown to visitors");
}

#[tokio::test]
async fn pricing_without_plans_says_so() {
    let app = spawn_app().await;
    let response = app.get("/pricing").await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("No plans are available yet")
    );
}

#[tokio::test]
async fn building_the_app_applies_the_embedded_migrations() {
    let app = spawn_app().await;
    let mut connection = app.database.connect().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut connection)
        .await
        .expect("the migrations table exists");
    assert_eq!(applied, keel::db::MIGRATOR.iter().count() as i64);
}

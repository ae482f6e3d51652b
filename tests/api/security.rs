//! Account security (SPEC, "Account security and lifecycle"): the user's sessions, ending
//! them, and the security log.

use reqwest::{StatusCode, header};

use crate::{
    helpers::{TestApp, spawn_app},
    visitor::{Page, Visitor},
};

const PASSWORD: &str = "correct horse battery";
const FIREFOX_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

/// A browser with this User-Agent, logged in as `email`.
async fn logged_in<'a>(app: &'a TestApp, email: &str, user_agent: &str) -> Visitor<'a> {
    let mut browser = Visitor::new(app);
    let token = browser.get("/login").await.csrf_token();
    let request = app
        .client
        .post(app.url("/login"))
        .header(header::USER_AGENT, user_agent)
        .form(&[("email", email), ("password", PASSWORD), ("csrf_token", &token)]);
    let page = browser.send(request).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    browser
}

/// The revoke action of the session row on `page` that is (or is not) the current one.
fn revoke_path(page: &Page, current: bool) -> String {
    let row = page
        .body
        .split("<tr class=\"session-row\">")
        .skip(1)
        .find(|row| row.contains("This browser") == current)
        .unwrap_or_else(|| panic!("no session row (current: {current}):\n{}", page.body));
    let start = row.find("action=\"").unwrap() + "action=\"".len();
    row[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_user_sees_their_sessions_and_signs_the_others_out() {
    let app = spawn_app().await;
    Visitor::signed_up(&app, "nadia@example.com", PASSWORD).await;
    let mut laptop = logged_in(&app, "nadia@example.com", FIREFOX_LINUX).await;
    let mut phone = logged_in(&app, "nadia@example.com", SAFARI_IPHONE).await;

    let page = laptop.get("/settings/sessions").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.body.matches("<tr class=\"session-row\">").count(),
        3,
        "{}",
        page.body
    );
    assert!(
        page.body.contains(
            "Firefox on Linux <span class=\"badge badge-success\" aria-current=\"true\">This browser"
        ),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Safari on iPhone") && page.body.contains("127.0.0.1"),
        "{}",
        page.body
    );
    assert_eq!(page.body.matches("Signed in</td>").count(), 2, "{}", page.body);
    assert!(page.body.contains("Account created"), "{}", page.body);

    // Another user cannot end Nadia's sessions, whatever id they send.
    let phone_session = revoke_path(&phone.get("/settings/sessions").await, true);
    let mut stranger = Visitor::signed_up(&app, "oscar@example.com", PASSWORD).await;
    for path in [phone_session.as_str(), "/settings/sessions/not-an-id/revoke"] {
        let page = stranger.submit("/settings/sessions", path, &[]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(phone.get("/dashboard").await.status, StatusCode::OK);
    // Nor can a page without the form's token.
    assert_eq!(
        laptop.post(&phone_session, &[]).await.status,
        StatusCode::FORBIDDEN
    );

    // Nadia signs her phone out from the laptop.
    let signed_out = laptop.submit("/settings/sessions", &phone_session, &[]).await;
    assert_eq!(signed_out.location(), "/settings/sessions?notice=revoked");
    let dashboard = phone.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::SEE_OTHER);
    assert!(
        dashboard.location().starts_with("/login"),
        "{}",
        dashboard.location()
    );
    // Ending it again: it is gone.
    let again = laptop.submit("/settings/sessions", &phone_session, &[]).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // Every other session: the signup's browser goes, the laptop stays.
    let others = laptop
        .submit("/settings/sessions", "/settings/sessions/revoke-others", &[])
        .await;
    assert_eq!(others.location(), "/settings/sessions?notice=revoked-others");
    let page = laptop.get("/settings/sessions").await;
    assert_eq!(
        page.body.matches("<tr class=\"session-row\">").count(),
        1,
        "{}",
        page.body
    );
    for logged in ["A session was signed out", "Every other session was signed out"] {
        assert!(page.body.contains(logged), "{logged}: {}", page.body);
    }

    // The current session: signed out here.
    let mine = revoke_path(&page, true);
    let out = laptop.submit("/settings/sessions", &mine, &[]).await;
    assert_eq!(out.location(), "/login");
    assert!(laptop.session().is_none(), "the cookie is removed");
    assert_eq!(
        laptop.get("/settings/sessions").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_password_change_is_in_the_security_log() {
    let app = spawn_app().await;
    let mut browser = Visitor::signed_up(&app, "petra@example.com", PASSWORD).await;
    let changed = browser
        .submit(
            "/settings",
            "/settings/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a new battery staple"),
            ],
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER);
    let page = browser.get("/settings/sessions").await;
    let log = page.body.split("Security log").nth(1).unwrap();
    let changed_at = log.find("Password changed").expect("logged");
    let created_at = log.find("Account created").expect("logged");
    assert!(changed_at < created_at, "newest first: {log}");
    assert!(log.contains("127.0.0.1"), "{log}");
}

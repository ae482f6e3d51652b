//! Accounts end to end: the forms as a browser posts them, the emails at the tests' SMTP
//! server, and the rows in PostgreSQL.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};

use crate::{
    email_cap::let_time_pass,
    helpers::{TestApp, spawn_app, spawn_app_with, spawn_app_with_smtp, spawn_app_with_smtp_and, wait_until},
    smtp_server::FakeSmtp,
    visitor::{Page, Visitor, field_value},
};

const PASSWORD: &str = "correct horse battery";

/// Signs `email` up with [`PASSWORD`]; the visitor is signed in afterwards.
async fn sign_up(visitor: &mut Visitor<'_>, email: &str) {
    let page = visitor
        .submit("/signup", "/signup", &[("email", email), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/dashboard");
}

async fn log_in(visitor: &mut Visitor<'_>, email: &str, password: &str) -> Page {
    visitor
        .submit("/login", "/login", &[("email", email), ("password", password)])
        .await
}

/// The link to `path` in the latest email to `to` whose subject contains `subject`.
pub async fn emailed_link(smtp: &FakeSmtp, to: &str, subject: &str, path: &str) -> String {
    wait_until(
        &format!("an email '{subject}' to {to}"),
        Duration::from_secs(30),
        || async {
            let message = smtp
                .accepted()
                .into_iter()
                .rev()
                .find(|m| m.recipients.iter().any(|r| r == to) && m.data.contains(subject))
                .ok_or_else(|| "not sent".to_owned())?;
            // Undo quoted-printable line folding and escapes.
            let data = message
                .data
                .replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=");
            let start = data.find(path).ok_or("no link")?;
            let link: String = data[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/?=-_.&".contains(*c))
                .collect();
            Ok(link)
        },
    )
    .await
}

pub fn emails_to(smtp: &FakeSmtp, to: &str, subject: &str) -> usize {
    smtp.accepted()
        .iter()
        .filter(|m| m.recipients.iter().any(|r| r == to) && m.data.contains(subject))
        .count()
}

#[tokio::test]
async fn sign_up_verify_log_out_log_in_and_see_the_dashboard() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);

    sign_up(&mut browser, "Alice@Example.com").await;
    let dashboard = browser.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(dashboard.body.contains("Alice&#39;s team"), "{}", dashboard.body);
    assert!(dashboard.body.contains("Please confirm your email address"));

    // One transaction made the user, the personal team and the owner membership.
    let mut db = app.database.connect().await;
    let (hash, role): (String, String) = sqlx::query_as(
        "SELECT u.password_hash, m.role FROM users u JOIN memberships m ON m.user_id = u.id
         WHERE u.email = 'Alice@Example.com'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert_eq!(role, "owner");

    let link = emailed_link(
        &smtp,
        "Alice@Example.com",
        "Confirm your email",
        "/verify-email?token=",
    )
    .await;
    let verified = browser.open_link(&link).await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    assert!(verified.body.contains("Your email is confirmed"));
    assert!(
        !browser
            .get("/dashboard")
            .await
            .body
            .contains("Please confirm your email address")
    );

    let token = browser.get("/dashboard").await.csrf_token();
    let out = browser.post("/logout", &[("csrf_token", &token)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/");
    assert!(browser.session().is_none(), "the cookie is removed");
    assert_eq!(
        browser.get("/dashboard").await.location(),
        "/login?next=%2Fdashboard"
    );

    // Any case of the address logs in.
    let login = log_in(&mut browser, "alice@example.COM", PASSWORD).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert_eq!(login.location(), "/dashboard");
    let dashboard = browser.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(dashboard.body.contains("Verified"));
}

#[tokio::test]
async fn pages_behind_login_send_strangers_to_the_login_form_and_back() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    for (path, next) in [
        ("/dashboard", "%2Fdashboard"),
        ("/settings?notice=x", "%2Fsettings%3Fnotice%3Dx"),
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.location(), format!("/login?next={next}"));
    }
    sign_up(&mut browser, "bob@example.com").await;
    let token = browser.get("/dashboard").await.csrf_token();
    browser.post("/logout", &[("csrf_token", &token)]).await;

    let form = browser.get("/login?next=%2Fsettings").await;
    assert!(form.body.contains(r#"name="next" value="/settings""#));
    let login = browser
        .post(
            "/login",
            &[
                ("email", "bob@example.com"),
                ("password", PASSWORD),
                ("next", "/settings"),
                ("csrf_token", &form.csrf_token()),
            ],
        )
        .await;
    assert_eq!(login.location(), "/settings");
}

#[tokio::test]
async fn login_never_redirects_off_site() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "carol@example.com").await;
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
        "evil.example",
    ] {
        let mut visitor = Visitor::new(&app);
        let form = visitor.get("/login").await;
        let login = visitor
            .post(
                "/login",
                &[
                    ("email", "carol@example.com"),
                    ("password", PASSWORD),
                    ("next", next),
                    ("csrf_token", &form.csrf_token()),
                ],
            )
            .await;
        assert_eq!(login.status, StatusCode::SEE_OTHER);
        assert_eq!(login.location(), "/dashboard", "next={next:?}");
        // Nor is an unsafe `next` carried into the form.
        let shown = visitor.get(&format!("/login?next={}", urlencode(next))).await;
        assert_eq!(
            shown.location(),
            "/dashboard",
            "signed in: sent on, to the safe default"
        );
    }
}

fn urlencode(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

#[tokio::test]
async fn a_form_without_the_right_csrf_token_is_refused_and_changes_nothing() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    let form = browser.get("/signup").await;
    let fields = [("email", "mallory@example.com"), ("password", PASSWORD)];

    let missing = browser.post("/signup", &fields).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert!(
        missing.body.contains("did not come from this site"),
        "{}",
        missing.body
    );

    let wrong = browser
        .post("/signup", &[fields[0], fields[1], ("csrf_token", "AAAA")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);

    // A token from another browser does not fit this one's cookie.
    let mut other = Visitor::new(&app);
    let foreign = other.get("/signup").await.csrf_token();
    let stolen = browser
        .post("/signup", &[fields[0], fields[1], ("csrf_token", &foreign)])
        .await;
    assert_eq!(stolen.status, StatusCode::FORBIDDEN);

    // No cookie at all (a cross-site form in a browser that never visited): refused too.
    let mut stranger = Visitor::new(&app);
    let cold = stranger
        .post(
            "/signup",
            &[fields[0], fields[1], ("csrf_token", &form.csrf_token())],
        )
        .await;
    assert_eq!(cold.status, StatusCode::FORBIDDEN);

    let mut db = app.database.connect().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(users, 0, "nothing was created");

    // The header is accepted in place of the field.
    let signed_up = browser
        .send(
            app.client
                .post(app.url("/signup"))
                .header("x-csrf-token", form.csrf_token())
                .form(&fields),
        )
        .await;
    assert_eq!(signed_up.status, StatusCode::SEE_OTHER);

    // Signed in, the token is bound to the session: logout with a wrong one keeps it alive.
    let refused = browser
        .post("/logout", &[("csrf_token", &form.csrf_token())])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get("/dashboard").await.status, StatusCode::OK);
}

#[tokio::test]
async fn login_issues_a_new_session_id_whatever_the_browser_had() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::new(&app);
    sign_up(&mut owner, "dave@example.com").await;

    // An attacker planted a session id of their choosing in the victim's browser.
    let planted = "A".repeat(43);
    let mut victim = Visitor::new(&app);
    victim.cookies.insert("keel_session".into(), planted.clone());
    let login = log_in(&mut victim, "dave@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert_ne!(victim.session().unwrap(), &planted, "a new session id at login");
    let mut attacker = Visitor::new(&app);
    attacker.cookies.insert("keel_session".into(), planted);
    assert_eq!(attacker.get("/dashboard").await.status, StatusCode::SEE_OTHER);

    // Or planted their own live session: logging in replaces it and ends it.
    let mut eve = Visitor::new(&app);
    sign_up(&mut eve, "eve@example.com").await;
    let eves = eve.session().unwrap().clone();
    let mut browser = Visitor::new(&app);
    browser.cookies.insert("keel_session".into(), eves.clone());
    let token = browser.get("/dashboard").await.csrf_token();
    let login = browser
        .post(
            "/login",
            &[
                ("email", "dave@example.com"),
                ("password", PASSWORD),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert_ne!(browser.session().unwrap(), &eves);
    assert!(browser.get("/dashboard").await.body.contains("dave&#39;s team"));
    assert_eq!(
        eve.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "the planted session ended"
    );
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "frank@example.com").await;
    let stolen_cookie = browser.session().unwrap().clone();
    let token = browser.get("/dashboard").await.csrf_token();
    browser.post("/logout", &[("csrf_token", &token)]).await;

    let mut thief = Visitor::new(&app);
    thief.cookies.insert("keel_session".into(), stolen_cookie);
    assert_eq!(thief.get("/dashboard").await.status, StatusCode::SEE_OTHER);
    let mut db = app.database.connect().await;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}

#[tokio::test]
async fn sessions_end_after_their_idle_and_absolute_limits() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut idle = Visitor::new(&app);
    sign_up(&mut idle, "grace@example.com").await;
    let mut old = Visitor::new(&app);
    assert_eq!(
        log_in(&mut old, "grace@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let mut fresh = Visitor::new(&app);
    assert_eq!(
        log_in(&mut fresh, "grace@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );

    let mut db = app.database.connect().await;
    let digest = |cookie: &String| sha256(cookie.as_bytes());
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '8 days' WHERE id_hash = $1")
        .bind(digest(idle.session().unwrap()))
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id_hash = $1")
        .bind(digest(old.session().unwrap()))
        .execute(&mut db)
        .await
        .unwrap();

    assert_eq!(
        idle.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "idle too long"
    );
    assert_eq!(
        old.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "past its absolute end"
    );
    assert_eq!(fresh.get("/dashboard").await.status, StatusCode::OK);

    // The purge (scheduled hourly; it may already have run) leaves only the live session.
    let pool = sqlx::PgPool::connect(&app.database.url()).await.unwrap();
    keel::accounts::sessions::purge_ended(&pool).await.unwrap();
    let left: Vec<Vec<u8>> = sqlx::query_scalar("SELECT id_hash FROM sessions")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(left, vec![digest(fresh.session().unwrap())]);
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

#[tokio::test]
async fn a_verification_link_works_once_and_not_after_it_expires() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "heidi@example.com").await;
    let link = emailed_link(
        &smtp,
        "heidi@example.com",
        "Confirm your email",
        "/verify-email?token=",
    )
    .await;

    assert_eq!(browser.open_link(&link).await.status, StatusCode::OK);
    let again = browser.open_link(&link).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.body.contains("already used"), "{}", again.body);

    // A second link, expired before use.
    let token = browser.get("/settings").await.csrf_token();
    let mut db = app.database.connect().await;
    sqlx::query("UPDATE users SET email_verified_at = NULL")
        .execute(&mut db)
        .await
        .unwrap();
    let_time_pass(&mut db, 120).await;
    let resent = browser
        .post("/settings/resend-verification", &[("csrf_token", &token)])
        .await;
    assert_eq!(resent.location(), "/settings?notice=verification-sent");
    wait_until("a second verification email", Duration::from_secs(30), || async {
        match emails_to(&smtp, "heidi@example.com", "Confirm your email") {
            2 => Ok(()),
            n => Err(format!("{n} emails")),
        }
    })
    .await;
    let second = emailed_link(
        &smtp,
        "heidi@example.com",
        "Confirm your email",
        "/verify-email?token=",
    )
    .await;
    assert_ne!(second, link);
    sqlx::query("UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&mut db)
        .await
        .unwrap();
    let expired = browser.open_link(&second).await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.body.contains("expired"), "{}", expired.body);

    assert_eq!(browser.get("/verify-email").await.status, StatusCode::BAD_REQUEST);
    for junk in [
        "/verify-email?token=",
        "/verify-email?token=abc",
        "/verify-email?token=%ZZ",
    ] {
        let page = browser.open_link(junk).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{junk}");
    }
    // Resending right after a send does not send again.
    let token = browser.get("/settings").await.csrf_token();
    let soon = browser
        .post("/settings/resend-verification", &[("csrf_token", &token)])
        .await;
    assert_eq!(soon.location(), "/settings?notice=verification-recent");
}

#[tokio::test]
async fn a_password_reset_ends_every_session_and_its_link_works_once() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut laptop = Visitor::new(&app);
    sign_up(&mut laptop, "ivan@example.com").await;
    let mut phone = Visitor::new(&app);
    assert_eq!(
        log_in(&mut phone, "ivan@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );

    let mut browser = Visitor::new(&app);
    let asked = browser
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "IVAN@example.com")],
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(asked.body.contains("Check your inbox"));
    let link = emailed_link(
        &smtp,
        "ivan@example.com",
        "Reset your password",
        "/reset-password?token=",
    )
    .await;

    let form = browser.open_link(&link).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let weak = browser
        .post(
            "/reset-password",
            &[
                ("password", "ivan@example.com"),
                ("csrf_token", &form.csrf_token()),
            ],
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(weak.body.contains("not your email address"), "{}", weak.body);

    let new_password = "a brand new secret";
    let reset = browser
        .post(
            "/reset-password",
            &[("password", new_password), ("csrf_token", &form.csrf_token())],
        )
        .await;
    assert_eq!(reset.status, StatusCode::SEE_OTHER, "{}", reset.body);
    assert_eq!(reset.location(), "/login?notice=password-reset");

    assert_eq!(
        laptop.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "laptop signed out"
    );
    assert_eq!(
        phone.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "phone signed out"
    );
    let reused = browser.open_link(&link).await;
    assert_eq!(reused.status, StatusCode::GONE);

    let mut fresh = Visitor::new(&app);
    let old = log_in(&mut fresh, "ivan@example.com", PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNPROCESSABLE_ENTITY);
    let new = log_in(&mut fresh, "ivan@example.com", new_password).await;
    assert_eq!(new.status, StatusCode::SEE_OTHER);
    emailed_link(
        &smtp,
        "ivan@example.com",
        "Your password was changed",
        "/forgot-password",
    )
    .await;
}

#[tokio::test]
async fn an_expired_reset_link_is_refused() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "judy@example.com").await;
    browser
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "judy@example.com")],
        )
        .await;
    let link = emailed_link(
        &smtp,
        "judy@example.com",
        "Reset your password",
        "/reset-password?token=",
    )
    .await;
    let form = browser.open_link(&link).await;
    let mut db = app.database.connect().await;
    sqlx::query(
        "UPDATE auth_tokens SET expires_at = now() - interval '1 second' WHERE purpose = 'reset_password'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let page = browser
        .post(
            "/reset-password",
            &[
                ("password", "another fine secret"),
                ("csrf_token", &form.csrf_token()),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("expired"));
    assert_eq!(browser.open_link(&link).await.status, StatusCode::GONE);
    assert_eq!(
        browser.open_link("/reset-password?token=nope").await.status,
        StatusCode::BAD_REQUEST
    );
}

/// The page with everything that differs per request (CSRF token) blanked out.
fn comparable(page: &Page) -> String {
    match field_value(&page.body, "csrf_token") {
        Some(token) => page.body.replace(&token, "TOKEN"),
        None => page.body.clone(),
    }
}

#[tokio::test]
async fn nothing_tells_whether_an_email_has_an_account() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::new(&app);
    sign_up(&mut owner, "kim@example.com").await;

    let mut browser = Visitor::new(&app);
    let wrong_password = log_in(&mut browser, "kim@example.com", "not the password").await;
    let unknown_email = log_in(&mut browser, "nobody@example.com", "not the password").await;
    assert_eq!(wrong_password.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_password.status, unknown_email.status);
    assert_eq!(
        comparable(&wrong_password).replace("kim@example.com", "EMAIL"),
        comparable(&unknown_email).replace("nobody@example.com", "EMAIL")
    );

    let known = browser
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "kim@example.com")],
        )
        .await;
    let unknown = browser
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "nobody@example.com")],
        )
        .await;
    assert_eq!(known.status, StatusCode::OK);
    assert_eq!(
        comparable(&known).replace("kim@example.com", "EMAIL"),
        comparable(&unknown).replace("nobody@example.com", "EMAIL")
    );
    emailed_link(
        &smtp,
        "kim@example.com",
        "Reset your password",
        "/reset-password?token=",
    )
    .await;
    assert_eq!(emails_to(&smtp, "nobody@example.com", ""), 0);

    // An unknown email costs a password hash too: its refusal takes as long as a wrong password.
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    // One attempt per address, so no per-account lock interferes.
    let mut known_times = Vec::new();
    let mut unknown_times = Vec::new();
    for round in 0..5 {
        let known = format!("kim{round}@example.com");
        sign_up(&mut Visitor::new(&app), &known).await;
        let unknown = format!("ghost{round}@example.com");
        for (email, times) in [(&known, &mut known_times), (&unknown, &mut unknown_times)] {
            let mut visitor = Visitor::new(&app);
            let token = visitor.get("/login").await.csrf_token();
            let started = Instant::now();
            let page = visitor
                .post(
                    "/login",
                    &[
                        ("email", email.as_str()),
                        ("password", "wrong password"),
                        ("csrf_token", &token),
                    ],
                )
                .await;
            times.push(started.elapsed());
            assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    let (known, unknown) = (median(known_times), median(unknown_times));
    assert!(
        unknown * 2 > known && known * 2 > unknown,
        "wrong password took {known:?}, unknown email {unknown:?}"
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_email_whether_or_not_it_exists() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut owner = Visitor::new(&app);
    sign_up(&mut owner, "leo@example.com").await;

    for email in ["leo@example.com", "ghost@example.com"] {
        let mut attacker = Visitor::new(&app);
        for attempt in 1..=5 {
            let page = log_in(&mut attacker, email, "guess").await;
            assert_eq!(
                page.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "attempt {attempt} for {email}"
            );
        }
        // Now each failure locks the address, the same way for both.
        let locked = log_in(&mut attacker, email, "guess").await;
        assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{email}");
        assert!(locked.headers.contains_key(header::RETRY_AFTER));
        assert!(locked.body.contains("Too many failed attempts"));
    }
    // Even the right password waits out the lock; then it works and clears the count.
    let mut browser = Visitor::new(&app);
    let locked = log_in(&mut browser, "leo@example.com", PASSWORD).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let login = log_in(&mut browser, "leo@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
}

#[tokio::test]
async fn auth_posts_are_limited_per_client_but_the_forms_still_show() {
    let (app, _smtp) = spawn_app_with_smtp_and(|env| {
        env.insert("AUTH_RATE_LIMIT_PER_MINUTE", "3".into());
    })
    .await;
    let mut browser = Visitor::new(&app);
    for _ in 0..3 {
        let page = log_in(&mut browser, "nobody@example.com", "whatever it is").await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let limited = log_in(&mut browser, "other@example.com", "whatever it is").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    let signup = browser
        .submit(
            "/signup",
            "/signup",
            &[("email", "new@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        signup.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one budget for all auth forms"
    );
    assert_eq!(browser.get("/login").await.status, StatusCode::OK);
    assert_eq!(browser.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn resend_verification_spends_the_auth_form_budget() {
    let (app, _smtp) = spawn_app_with_smtp_and(|env| {
        env.insert("AUTH_RATE_LIMIT_PER_MINUTE", "3".into());
    })
    .await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "una@example.com").await;
    for _ in 0..2 {
        let page = browser
            .submit("/settings", "/settings/resend-verification", &[])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
    }
    let limited = browser
        .submit("/settings", "/settings/resend-verification", &[])
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    let login = log_in(&mut Visitor::new(&app), "una@example.com", PASSWORD).await;
    assert_eq!(
        login.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one budget with the auth forms"
    );
    assert_eq!(browser.get("/settings").await.status, StatusCode::OK);
}

#[tokio::test]
async fn form_errors_come_back_with_422_a_message_per_field_and_the_input_but_never_the_password() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    let secret = "s3cret-not-echoed";
    let page = browser
        .submit(
            "/signup",
            "/signup",
            &[("email", "not-an-email"), ("password", secret)],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.body
            .contains("Enter an email address like name@example.com.")
    );
    assert!(page.body.contains(r#"value="not-an-email""#));
    assert!(!page.body.contains(secret));

    let short = browser
        .submit(
            "/signup",
            "/signup",
            &[("email", "mia@example.com"), ("password", "short")],
        )
        .await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(short.body.contains("Use at least 8 characters."));
    assert!(!short.body.contains(r#"value="short""#));

    let empty = browser.submit("/signup", "/signup", &[]).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(empty.body.contains("Enter your email address."));

    sign_up(&mut browser, "mia@example.com").await;
    let mut other = Visitor::new(&app);
    let taken = other
        .submit(
            "/signup",
            "/signup",
            &[("email", "MIA@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(taken.body.contains("already exists"));

    let settings = browser.get("/settings").await;
    let wrong = browser
        .post(
            "/settings/password",
            &[
                ("current_password", "wrong"),
                ("new_password", "a new secret here"),
                ("csrf_token", &settings.csrf_token()),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(wrong.body.contains("This is not your current password."));
}

#[tokio::test]
async fn html_in_the_input_is_shown_as_text() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    let payload = r#""><script>alert(1)</script>"#;
    let page = browser
        .submit(
            "/signup",
            "/signup",
            &[("email", payload), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!page.body.contains("<script>alert(1)"), "{}", page.body);
    assert!(
        page.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.body.contains("&lt;script&gt;")
    );

    // Stored and shown back on every page: the team name comes from the address.
    sign_up(&mut browser, "o'hara&co@example.com").await;
    let dashboard = browser.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK, "{}", dashboard.body);
    assert!(
        dashboard.body.contains("o&#39;hara&#38;co&#39;s team"),
        "{}",
        dashboard.body
    );
}

#[tokio::test]
async fn changing_the_password_keeps_this_session_and_ends_the_others() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut laptop = Visitor::new(&app);
    sign_up(&mut laptop, "nina@example.com").await;
    let mut phone = Visitor::new(&app);
    log_in(&mut phone, "nina@example.com", PASSWORD).await;

    let token = laptop.get("/settings").await.csrf_token();
    let changed = laptop
        .post(
            "/settings/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a new secret here"),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);
    assert_eq!(changed.location(), "/settings?notice=password-changed");
    assert_eq!(laptop.get("/dashboard").await.status, StatusCode::OK);
    assert_eq!(phone.get("/dashboard").await.status, StatusCode::SEE_OTHER);
    emailed_link(
        &smtp,
        "nina@example.com",
        "Your password was changed",
        "/forgot-password",
    )
    .await;
}

#[tokio::test]
async fn malformed_form_bodies_get_a_4xx_and_never_a_5xx() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    let token = browser.get("/signup").await.csrf_token();
    let cookie = browser.cookie_header();
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "invalid UTF-8",
            form,
            b"email=\xff\xfe&password=abcdefghij&csrf_token=".to_vec(),
        ),
        (
            "bad percent-encoding",
            form,
            b"email=%ZZ&password=%&csrf_token=".to_vec(),
        ),
        (
            "NUL bytes",
            form,
            b"email=a%00b@example.com&password=abc%00defghi&csrf_token=".to_vec(),
        ),
        (
            "duplicate fields",
            form,
            b"email=a@example.com&email=b@example.com&password=x&csrf_token=".to_vec(),
        ),
        (
            "JSON body",
            "application/json",
            br#"{"email":"a@example.com"}"#.to_vec(),
        ),
        ("multipart", "multipart/form-data; boundary=x", b"--x--".to_vec()),
        ("no content type", "", b"email=a".to_vec()),
        (
            "huge field",
            form,
            format!("email={}&csrf_token=", "a".repeat(70_000)).into_bytes(),
        ),
    ];
    for (what, content_type, mut body) in cases {
        if body.ends_with(b"csrf_token=") {
            body.extend_from_slice(token.as_bytes());
        }
        for path in ["/signup", "/login", "/forgot-password", "/reset-password?token=x"] {
            let mut request = app
                .client
                .post(app.url(path))
                .header(header::COOKIE, &cookie)
                .body(body.clone());
            if !content_type.is_empty() {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            assert!(status.is_client_error(), "{what} to {path}: {status}");
        }
    }
    let huge = app
        .client
        .post(app.url("/login"))
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, form)
        .body(format!("email={}&csrf_token={token}", "a".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn under_https_the_cookies_are_secure_and_host_only() {
    let app = spawn_app_with(|env| {
        env.insert("BASE_URL", "https://app.example.com".into());
    })
    .await;
    let page = app.get("/signup").await;
    let set = page.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-keel_csrf="), "{set}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
}

#[tokio::test]
async fn public_pages_set_no_cookie_until_a_form_needs_one() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    for path in ["/", "/pricing", "/static/missing.css"] {
        let response = app.get(path).await;
        assert!(!response.headers().contains_key(header::SET_COOKIE), "{path}");
    }
    assert!(app.get("/login").await.headers().contains_key(header::SET_COOKIE));
}

#[tokio::test]
async fn every_state_changing_route_refuses_a_post_without_a_token() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "olga@example.com").await;
    for path in [
        "/signup",
        "/login",
        "/logout",
        "/forgot-password",
        "/reset-password?token=x",
        "/settings/password",
        "/settings/resend-verification",
        "/teams",
        "/teams/switch",
        "/team/invitations",
        "/team/invitations/00000000-0000-0000-0000-000000000000/resend",
        "/team/invitations/00000000-0000-0000-0000-000000000000/revoke",
        "/team/members/00000000-0000-0000-0000-000000000000/role",
        "/team/members/00000000-0000-0000-0000-000000000000/remove",
        "/team/leave",
        "/team/security",
        "/invite",
        "/settings/sessions/00000000-0000-0000-0000-000000000000/revoke",
        "/settings/sessions/revoke-others",
        "/settings/email",
        "/settings/2fa/enable",
        "/settings/export",
        "/settings/delete",
        "/settings/2fa/disable",
        "/login/2fa",
    ] {
        let page = browser
            .post(path, &[("email", "olga@example.com"), ("password", PASSWORD)])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        browser.get("/dashboard").await.status,
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn with_redis_down_logins_work_and_are_still_throttled_in_process() {
    let (app, _smtp) = spawn_app_with_smtp_and(|env| {
        // Nothing listens there: every Redis command fails at once.
        env.insert("REDIS_URL", "redis://127.0.0.1:1".into());
    })
    .await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "pia@example.com").await;
    let mut other = Visitor::new(&app);
    assert_eq!(
        log_in(&mut other, "pia@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );

    let mut attacker = Visitor::new(&app);
    for _ in 0..5 {
        let page = log_in(&mut attacker, "pia@example.com", "guess").await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let locked = log_in(&mut attacker, "pia@example.com", "guess").await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn with_redis_down_the_auth_budget_is_counted_in_process() {
    let (app, _smtp) = spawn_app_with_smtp_and(|env| {
        env.insert("REDIS_URL", "redis://127.0.0.1:1".into());
        env.insert("AUTH_RATE_LIMIT_PER_MINUTE", "3".into());
    })
    .await;
    let mut browser = Visitor::new(&app);
    for i in 0..3 {
        let page = log_in(&mut browser, &format!("nobody{i}@example.com"), "whatever it is").await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let limited = log_in(&mut browser, "other@example.com", "whatever it is").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn a_hash_made_with_older_parameters_is_upgraded_at_login() {
    use argon2::password_hash::PasswordHasher as _;
    let (app, _smtp) = spawn_app_with_smtp().await;
    sign_up(&mut Visitor::new(&app), "quinn@example.com").await;
    let older = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 3, 1, None).unwrap(),
    );
    let old_hash = older
        .hash_password_with_salt(PASSWORD.as_bytes(), b"0123456789abcdef")
        .unwrap()
        .to_string();
    let mut db = app.database.connect().await;
    sqlx::query("UPDATE users SET password_hash = $1")
        .bind(&old_hash)
        .execute(&mut db)
        .await
        .unwrap();

    let login = log_in(&mut Visitor::new(&app), "quinn@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "the old hash still verifies");
    let upgraded: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    let again = log_in(&mut Visitor::new(&app), "quinn@example.com", PASSWORD).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "and the new one too");
}

#[tokio::test]
async fn every_spelling_of_an_address_shares_one_failure_count() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    sign_up(&mut Visitor::new(&app), "rita@example.com").await;
    let mut attacker = Visitor::new(&app);
    for email in [
        "rita@example.com",
        "RITA@example.com",
        "Rita@Example.com",
        "rIta@example.COM",
        "ritA@EXAMPLE.com",
    ] {
        assert_eq!(
            log_in(&mut attacker, email, "guess").await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    let locked = log_in(&mut attacker, "RiTa@example.com", "guess").await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_sent_email_leaves_no_usable_link_in_the_database() {
    let (app, smtp) = spawn_app_with_smtp().await;
    sign_up(&mut Visitor::new(&app), "sam@example.com").await;
    let link = emailed_link(
        &smtp,
        "sam@example.com",
        "Confirm your email",
        "/verify-email?token=",
    )
    .await;
    let token = link.rsplit('=').next().unwrap().to_owned();
    let mut db = app.database.connect().await;
    wait_until("the email marked sent", Duration::from_secs(10), || async {
        let mut db = app.database.connect().await;
        let status: String = sqlx::query_scalar("SELECT status FROM emails")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if status == "sent" { Ok(()) } else { Err(status) }
    })
    .await;
    let holding: i64 =
        sqlx::query_scalar("SELECT count(*) FROM emails WHERE text_body LIKE $1 OR html_body LIKE $1")
            .bind(format!("%{token}%"))
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(holding, 0);
    // And the link still works: the database kept only its hash.
    assert_eq!(Visitor::new(&app).open_link(&link).await.status, StatusCode::OK);
}

#[tokio::test]
async fn parallel_guesses_cannot_slip_past_the_account_lock() {
    let (app, _smtp) = spawn_app_with_smtp().await;
    sign_up(&mut Visitor::new(&app), "tom@example.com").await;
    // Twelve guesses at once, each from a browser of its own.
    let mut guesses = Vec::new();
    for _ in 0..12 {
        let mut visitor = Visitor::new(&app);
        let token = visitor.get("/login").await.csrf_token();
        guesses.push(async move {
            visitor
                .post(
                    "/login",
                    &[
                        ("email", "tom@example.com"),
                        ("password", "a guess"),
                        ("csrf_token", &token),
                    ],
                )
                .await
                .status
        });
    }
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    let locked = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + locked, 12, "{statuses:?}");
    assert!(checked <= 6, "{checked} passwords were checked: {statuses:?}");
}

/// `name`'s `Set-Cookie` line in `page`.
fn set_cookie<'p>(page: &'p Page, name: &str) -> &'p str {
    page.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|line| line.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", page.headers))
}

#[tokio::test]
async fn an_emailed_token_leaves_the_url_at_once_and_its_pages_are_neither_cached_nor_referred() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::new(&app);
    sign_up(&mut browser, "uma@example.com").await;
    browser
        .submit(
            "/forgot-password",
            "/forgot-password",
            &[("email", "uma@example.com")],
        )
        .await;
    for (subject, path, cookie) in [
        ("Reset your password", "/reset-password", "keel_reset"),
        ("Confirm your email", "/verify-email", "keel_verify"),
    ] {
        let link = emailed_link(&smtp, "uma@example.com", subject, &format!("{path}?token=")).await;
        let token = link.rsplit('=').next().unwrap();

        // The first GET: straight to the same path without the query, the token in a cookie.
        let first = browser.get(&link).await;
        assert_eq!(first.status, StatusCode::SEE_OTHER, "{link}");
        assert_eq!(first.location(), path);
        let line = set_cookie(&first, cookie);
        assert!(line.starts_with(&format!("{cookie}={token};")), "{line}");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
            assert!(line.contains(attribute), "{attribute} missing: {line}");
        }

        // The page: no token in it, nothing for a Referer or a cache to keep.
        let page = browser.get(path).await;
        assert!(page.status.is_success(), "{path}: {} {}", page.status, page.body);
        assert!(!page.body.contains(token), "{}", page.body);
        for response in [&first, &page] {
            assert_eq!(response.headers[header::REFERRER_POLICY], "no-referrer", "{path}");
            assert_eq!(response.headers[header::CACHE_CONTROL], "no-store", "{path}");
        }
        // The token works only with the cookie of the browser that opened the link.
        assert_eq!(
            Visitor::new(&app).get(path).await.status,
            StatusCode::BAD_REQUEST,
            "{path} without the cookie"
        );
    }

    // The reset form posts to the bare path; the token comes from the cookie, which goes.
    let form = browser.get("/reset-password").await;
    assert!(form.body.contains(r#"action="/reset-password""#), "{}", form.body);
    let reset = browser
        .post(
            "/reset-password",
            &[
                ("password", "a brand new secret"),
                ("csrf_token", &form.csrf_token()),
            ],
        )
        .await;
    assert_eq!(reset.location(), "/login?notice=password-reset", "{}", reset.body);
    assert!(set_cookie(&reset, "keel_reset").contains("Max-Age=0"));
    assert!(!browser.cookies.contains_key("keel_reset"));
}

/// Logs in from `client` (keel trusts the test's own address to forward).
async fn log_in_from(
    visitor: &mut Visitor<'_>,
    app: &TestApp,
    client: &str,
    email: &str,
    password: &str,
) -> Page {
    let token = visitor.get("/login").await.csrf_token();
    let request = app
        .client
        .post(app.url("/login"))
        .header("x-forwarded-for", client)
        .form(&[("email", email), ("password", password), ("csrf_token", &token)]);
    visitor.send(request).await
}

#[tokio::test]
async fn an_attacker_failing_on_purpose_is_slowed_but_cannot_lock_the_owner_out() {
    let app = spawn_app_with(|env| {
        env.insert("TRUSTED_PROXIES", "127.0.0.1/32".into());
    })
    .await;
    sign_up(&mut Visitor::new(&app), "vera@example.com").await;

    let mut attacker = Visitor::new(&app);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let page = log_in_from(&mut attacker, &app, "203.0.113.66", "vera@example.com", "guess").await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(statuses[..5], [422; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");

    // The owner, from their own address, gets in at once.
    let mut owner = Visitor::new(&app);
    let login = log_in_from(&mut owner, &app, "198.51.100.20", "vera@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);

    // Guessing from many addresses, one guess each, meets the looser per-account ceiling
    // (50, five of them spent above): then everyone waits, the owner too. The guesser goes on
    // until the lock has over a second left (the first lasts 1 s, the next 2 s), so that the
    // owner's attempt right after surely falls inside it.
    let mut admitted = 0;
    for n in 0..100 {
        let page = log_in_from(
            &mut attacker,
            &app,
            &format!("192.0.2.{n}"),
            "vera@example.com",
            "guess",
        )
        .await;
        if page.status != StatusCode::TOO_MANY_REQUESTS {
            admitted += 1;
            continue;
        }
        let retry: u64 = page.headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if retry >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
    assert!(
        (45..=48).contains(&admitted),
        "{admitted} guesses before the account locked"
    );
    let mut owner_elsewhere = Visitor::new(&app);
    let locked = log_in_from(
        &mut owner_elsewhere,
        &app,
        "198.51.100.21",
        "vera@example.com",
        PASSWORD,
    )
    .await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_stolen_session_cannot_guess_the_current_password_at_full_speed() {
    let app = spawn_app().await;
    let mut thief = Visitor::new(&app);
    sign_up(&mut thief, "walt@example.com").await;
    let mut statuses = Vec::new();
    for n in 0..7 {
        let token = thief.get("/settings").await.csrf_token();
        let page = thief
            .post(
                "/settings/password",
                &[
                    ("current_password", &format!("guess number {n}")),
                    ("new_password", "a new password of mine"),
                    ("csrf_token", &token),
                ],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(statuses[..5], [422; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
}

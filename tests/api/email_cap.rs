//! The cap on email to one recipient (SPEC: "Email to one recipient is capped"): at most one
//! email of each kind a minute and ten in all an hour, however many browsers, accounts or
//! spellings of the address ask, and however many at once. Time passes by moving the rows'
//! timestamps back (`let_time_pass`).

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{StatusCode, header};
use sqlx::PgConnection;

use crate::{
    helpers::{TestApp, spawn_app_with_smtp, wait_until},
    smtp_server::FakeSmtp,
    visitor::Visitor,
};

const PASSWORD: &str = "correct horse battery";
const VERIFY: &str = "Confirm your email address";
const RESET: &str = "Reset your password";
const SENT: &str = "/settings?notice=verification-sent";
const RECENT: &str = "/settings?notice=verification-recent";

/// Moves the timestamps of emails and link tokens `seconds` back: as if that long had passed.
pub async fn let_time_pass(db: &mut PgConnection, seconds: u32) {
    let seconds = f64::from(seconds);
    sqlx::query("UPDATE emails SET created_at = created_at - make_interval(secs => $1)")
        .bind(seconds)
        .execute(&mut *db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE auth_tokens SET created_at = created_at - make_interval(secs => $1),
                                expires_at = expires_at - make_interval(secs => $1)",
    )
    .bind(seconds)
    .execute(&mut *db)
    .await
    .unwrap();
}

/// `address` lower-cased, without a `+tag`: the mailbox its email lands in.
fn mailbox(address: &str) -> String {
    let address = address.to_lowercase();
    match address.split_once('@') {
        Some((local, domain)) => format!("{}@{domain}", local.split('+').next().unwrap_or(local)),
        None => address,
    }
}

/// Emails in the outbox for `to`'s mailbox (any spelling) whose subject is `subject`.
async fn queued(db: &mut PgConnection, to: &str, subject: &str) -> i64 {
    sqlx::query_scalar(
        r"SELECT count(*) FROM emails
          WHERE regexp_replace(lower(recipient), '\+[^@]*@', '@') = $1 AND subject = $2",
    )
    .bind(mailbox(to))
    .bind(subject)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Once every reset job has run and the outbox is delivered: how many emails with `subject`
/// the SMTP server took for `to`'s mailbox (any spelling).
async fn delivered(app: &TestApp, smtp: &FakeSmtp, to: &str, subject: &str) -> usize {
    wait_until("reset jobs and emails done", Duration::from_secs(30), || async {
        let mut db = app.database.connect().await;
        let (jobs, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE kind = 'accounts.send_password_reset'),
                    (SELECT count(*) FROM emails WHERE status = 'pending')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        match (jobs, pending) {
            (0, 0) => Ok(()),
            state => Err(format!("(reset jobs, pending emails) = {state:?}")),
        }
    })
    .await;
    let subject = format!("Subject: {subject}");
    smtp.accepted()
        .iter()
        .filter(|m| m.recipients.iter().any(|r| mailbox(r) == mailbox(to)) && m.data.contains(&subject))
        .count()
}

/// Asks for a reset link for `email` from a browser of its own; the answer is always the same.
async fn forgot_password(app: &TestApp, email: &str) {
    let page = Visitor::new(app)
        .submit("/forgot-password", "/forgot-password", &[("email", email)])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Check your inbox"), "{}", page.body);
}

async fn resend_verification(browser: &mut Visitor<'_>) -> String {
    let page = browser
        .submit("/settings", "/settings/resend-verification", &[])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    page.location().to_owned()
}

#[tokio::test]
async fn thirty_parallel_resends_send_one_verification_email() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::signed_up(&app, "ann@example.com", PASSWORD).await;
    let mut db = app.database.connect().await;
    let_time_pass(&mut db, 120).await; // the sign-up's email is old news

    let token = browser.get("/settings").await.csrf_token();
    let cookie = browser.cookie_header();
    let resends = (0..30).map(|_| {
        app.client
            .post(app.url("/settings/resend-verification"))
            .header(header::COOKIE, &cookie)
            .form(&[("csrf_token", &token)])
            .send()
    });
    let locations: Vec<String> = join_all(resends)
        .await
        .into_iter()
        .map(|response| {
            let response = response.unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            response.headers()[header::LOCATION].to_str().unwrap().to_owned()
        })
        .collect();
    let sent = locations.iter().filter(|l| *l == SENT).count();
    let recent = locations.iter().filter(|l| *l == RECENT).count();
    assert_eq!((sent, recent), (1, 29), "{locations:?}");
    assert_eq!(
        queued(&mut db, "ann@example.com", VERIFY).await,
        2,
        "sign-up + one"
    );
    assert_eq!(delivered(&app, &smtp, "ann@example.com", VERIFY).await, 2);
}

#[tokio::test]
async fn twenty_parallel_reset_requests_for_one_address_send_one_email() {
    let (app, smtp) = spawn_app_with_smtp().await;
    Visitor::signed_up(&app, "bea@example.com", PASSWORD).await;

    // Twenty browsers, each with its form open, submit at once.
    let mut forms = Vec::new();
    for _ in 0..20 {
        let mut visitor = Visitor::new(&app);
        let token = visitor.get("/forgot-password").await.csrf_token();
        forms.push((visitor.cookie_header(), token));
    }
    let requests = forms.iter().map(|(cookie, token)| {
        app.client
            .post(app.url("/forgot-password"))
            .header(header::COOKIE, cookie)
            .form(&[("email", "bea@example.com"), ("csrf_token", token)])
            .send()
    });
    for response in join_all(requests).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(delivered(&app, &smtp, "bea@example.com", RESET).await, 1);
    let mut db = app.database.connect().await;
    assert_eq!(queued(&mut db, "bea@example.com", RESET).await, 1);
}

#[tokio::test]
async fn plus_addressed_spellings_are_one_recipient() {
    let (app, smtp) = spawn_app_with_smtp().await;
    // Three accounts whose emails all land in cat@example.com: each sign-up works…
    for email in ["cat+1@example.com", "Cat+news@Example.com", "CAT@example.com"] {
        Visitor::signed_up(&app, email, PASSWORD).await;
    }
    // …but the mailbox gets one verification email, not three.
    let mut db = app.database.connect().await;
    assert_eq!(queued(&mut db, "cat@example.com", VERIFY).await, 1);
    let mut second = Visitor::new(&app);
    let login = second
        .submit(
            "/login",
            "/login",
            &[("email", "cat+news@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    assert_eq!(resend_verification(&mut second).await, RECENT);

    // A reset is another kind, with its own one a minute, shared by the spellings too.
    for email in ["cat+1@example.com", "cat@example.com", "CAT+news@example.com"] {
        forgot_password(&app, email).await;
    }
    assert_eq!(delivered(&app, &smtp, "cat@example.com", RESET).await, 1);
    assert_eq!(delivered(&app, &smtp, "cat@example.com", VERIFY).await, 1);
}

#[tokio::test]
async fn an_eleventh_capped_email_within_the_hour_is_refused() {
    let (app, smtp) = spawn_app_with_smtp().await;
    let mut browser = Visitor::signed_up(&app, "dan@example.com", PASSWORD).await; // email 1
    let mut db = app.database.connect().await;
    for n in 2..=10 {
        let_time_pass(&mut db, 61).await;
        assert_eq!(resend_verification(&mut browser).await, SENT, "email {n}");
    }
    let_time_pass(&mut db, 61).await;
    assert_eq!(
        resend_verification(&mut browser).await,
        RECENT,
        "the 11th within the hour"
    );
    // The hour's allowance covers every kind: a reset is answered as always, and not sent.
    forgot_password(&app, "dan@example.com").await;
    assert_eq!(delivered(&app, &smtp, "dan@example.com", RESET).await, 0);
    assert_eq!(delivered(&app, &smtp, "dan@example.com", VERIFY).await, 10);

    // An hour on, the allowance is back.
    let_time_pass(&mut db, 3600).await;
    assert_eq!(resend_verification(&mut browser).await, SENT);
    assert_eq!(queued(&mut db, "dan@example.com", VERIFY).await, 11);
}

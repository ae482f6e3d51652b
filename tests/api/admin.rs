//! The operator console (SPEC "Operator console"): who sees it, what each action does, and
//! what it refuses.

use reqwest::{StatusCode, header};
use serde_json::json;

use crate::{
    billing::event,
    helpers::{TestApp, run_keel_async, spawn_production_app, spawn_web_only_with},
    visitor::Visitor,
};

const PASSWORD: &str = "console password 1";

/// Every page of the console (with ids that exist or not: it must not matter).
const PAGES: [&str; 7] = [
    "/admin",
    "/admin/users?q=a",
    "/admin/users/00000000-0000-0000-0000-000000000000",
    "/admin/events",
    "/admin/events/evt_nope",
    "/admin/jobs",
    "/admin/emails",
];
/// Every action of the console.
const ACTIONS: [&str; 7] = [
    "/admin/users/00000000-0000-0000-0000-000000000000/disable",
    "/admin/users/00000000-0000-0000-0000-000000000000/enable",
    "/admin/users/00000000-0000-0000-0000-000000000000/end-sessions",
    "/admin/users/00000000-0000-0000-0000-000000000000/impersonate",
    "/admin/teams/00000000-0000-0000-0000-000000000000/reconcile",
    "/admin/events/evt_nope/replay",
    "/admin/jobs/1/retry",
];

/// `email` made an operator with `keel admin grant`, as the operator would.
async fn grant(app: &TestApp, email: &str) {
    let env = vec![
        ("APP_ENV", "development".to_owned()),
        ("DATABASE_URL", app.database.url()),
    ];
    let (code, output) = run_keel_async(&["admin", "grant", email], env).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains(&format!("{email} is an operator")), "{output}");
}

/// A signed-up operator's browser.
async fn operator(app: &TestApp) -> Visitor<'_> {
    let visitor = Visitor::signed_up(app, "ops@example.com", PASSWORD).await;
    grant(app, "ops@example.com").await;
    visitor
}

async fn user_id(app: &TestApp, email: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&mut app.database.connect().await)
        .await
        .unwrap()
}

async fn audit_rows(app: &TestApp) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as("SELECT operator_email, action, target, detail FROM operator_audit_log ORDER BY id")
        .fetch_all(&mut app.database.connect().await)
        .await
        .unwrap()
}

/// Posts `action` from `visitor` with the CSRF token of the page at `form`.
async fn act(visitor: &mut Visitor<'_>, form: &str, action: &str) -> crate::visitor::Page {
    visitor.submit(form, action, &[]).await
}

#[tokio::test]
async fn the_console_is_404_for_everyone_but_operators() {
    let app = spawn_web_only_with(|_| {}).await;
    let mut ops = operator(&app).await;
    let mut member = Visitor::signed_up(&app, "member@example.com", PASSWORD).await;
    let mut stranger = Visitor::new(&app);

    for page in PAGES {
        assert_eq!(
            stranger.get(page).await.status,
            StatusCode::NOT_FOUND,
            "{page} signed out"
        );
        assert_eq!(
            member.get(page).await.status,
            StatusCode::NOT_FOUND,
            "{page} as a user"
        );
    }
    // A user posting the actions with a valid token of their own: 404, nothing recorded.
    for action in ACTIONS {
        let page = member.submit("/settings", action, &[]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{action} as a user");
    }
    assert!(audit_rows(&app).await.is_empty());
    // An operator's browser made to post by another site (no token): refused before anything.
    for action in ACTIONS.iter().chain(&["/admin/impersonation/stop"]) {
        assert_eq!(
            ops.post(action, &[]).await.status,
            StatusCode::FORBIDDEN,
            "{action} without a token"
        );
    }
    assert!(audit_rows(&app).await.is_empty());

    let overview = ops.get("/admin").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert_eq!(overview.headers[header::CACHE_CONTROL], "no-store");
    assert!(
        overview.body.contains("Unprocessed Stripe events"),
        "{}",
        overview.body
    );
    let users = ops.get("/admin/users?q=mem").await;
    assert_eq!(users.headers[header::CACHE_CONTROL], "no-store");
    let row = |email: &str| format!(">{email}</a>");
    assert!(users.body.contains(&row("member@example.com")) && !users.body.contains(&row("ops@example.com")));
    let by_domain = ops.get("/admin/users?q=%40example.com").await;
    assert!(
        by_domain.body.contains(&row("member@example.com"))
            && by_domain.body.contains(&row("ops@example.com"))
    );
    let elsewhere = ops.get("/admin/users?q=%40example.org").await;
    assert!(!elsewhere.body.contains(&row("member@example.com")));
    assert_eq!(ops.get("/admin/nothing-here").await.status, StatusCode::NOT_FOUND);

    // Revoked: the console is gone at once (the flag is read with the session).
    let env = vec![
        ("APP_ENV", "development".to_owned()),
        ("DATABASE_URL", app.database.url()),
    ];
    let (code, output) = run_keel_async(&["admin", "revoke", "ops@example.com"], env.clone()).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(ops.get("/admin").await.status, StatusCode::NOT_FOUND);
    let (code, output) = run_keel_async(&["admin", "grant", "nobody@example.com"], env).await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("no account has the address nobody@example.com"),
        "{output}"
    );
}

#[tokio::test]
async fn in_production_an_operator_needs_two_factor_sign_in() {
    let app = spawn_production_app().await;
    let mut ops = operator(&app).await;
    assert_eq!(
        ops.get("/admin").await.status,
        StatusCode::NOT_FOUND,
        "no 2FA yet"
    );
    sqlx::query("INSERT INTO two_factor (user_id, secret_sealed, enabled_at) VALUES ($1, '\\x00', now())")
        .bind(user_id(&app, "ops@example.com").await)
        .execute(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(ops.get("/admin").await.status, StatusCode::OK, "with 2FA");
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_their_logins_until_enabled() {
    let app = spawn_web_only_with(|_| {}).await;
    let mut ops = operator(&app).await;
    let mut customer = Visitor::signed_up(&app, "customer@example.com", PASSWORD).await;
    let id = user_id(&app, "customer@example.com").await;
    let page = format!("/admin/users/{id}");
    let shown = ops.get(&page).await;
    assert!(shown.body.contains("customer@example.com") && shown.body.contains("Live sessions"));

    // Without the CSRF token: refused, nothing changes.
    let forged = ops.post(&format!("{page}/disable"), &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(customer.get("/dashboard").await.status, StatusCode::OK);

    let disabled = act(&mut ops, &page, &format!("{page}/disable")).await;
    assert_eq!(
        (disabled.status, disabled.location()),
        (StatusCode::SEE_OTHER, page.as_str())
    );
    assert_eq!(
        customer.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "session ended"
    );
    let mut again = Visitor::new(&app);
    let login = again
        .submit(
            "/login",
            "/login",
            &[("email", "customer@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert!(login.body.contains("This account is disabled"), "{}", login.body);
    assert!(again.session().is_none());
    // A wrong password says nothing about the account's state.
    let wrong = Visitor::new(&app)
        .submit(
            "/login",
            "/login",
            &[("email", "customer@example.com"), ("password", "not it")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!wrong.body.contains("disabled"));
    assert!(ops.get(&page).await.body.contains("disabled"));

    // An operator cannot lock themselves out.
    let me = user_id(&app, "ops@example.com").await;
    let mine = format!("/admin/users/{me}");
    assert_eq!(
        act(&mut ops, &mine, &format!("{mine}/disable")).await.status,
        StatusCode::CONFLICT
    );

    let enabled = act(&mut ops, &page, &format!("{page}/enable")).await;
    assert_eq!(enabled.status, StatusCode::SEE_OTHER);
    let mut back = Visitor::new(&app);
    let login = back
        .submit(
            "/login",
            "/login",
            &[("email", "customer@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let ended = act(&mut ops, &page, &format!("{page}/end-sessions")).await;
    assert_eq!(ended.status, StatusCode::SEE_OTHER);
    assert_eq!(
        back.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "sessions ended"
    );

    let target = format!("user:{id}");
    let actions: Vec<(String, String)> = audit_rows(&app)
        .await
        .into_iter()
        .map(|(operator, action, target, _)| (format!("{operator} {action}"), target))
        .collect();
    assert_eq!(
        actions,
        [
            ("ops@example.com user.disable".to_owned(), target.clone()),
            ("ops@example.com user.enable".to_owned(), target.clone()),
            ("ops@example.com user.end_sessions".to_owned(), target),
        ]
    );
    let log: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM security_log WHERE user_id = $1 AND event LIKE '%operator' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut app.database.connect().await)
    .await
    .unwrap();
    assert_eq!(
        log,
        [
            "disabled_by_operator",
            "enabled_by_operator",
            "sessions_ended_by_operator"
        ]
    );
    let history = ops.get(&page).await.body;
    assert!(history.contains("user.end_sessions") && history.contains("Account disabled by support"));
    assert_eq!(
        ops.get("/admin/users/not-a-uuid").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        act(
            &mut ops,
            &page,
            "/admin/users/00000000-0000-0000-0000-000000000000/disable"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

/// Stores `payload` as event `id` of `kind`, with a processing job that failed with `error`
/// when given.
async fn store_event(
    app: &TestApp,
    id: &str,
    kind: &str,
    payload: &str,
    processed: bool,
    error: Option<&str>,
) {
    let mut db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO stripe_events (id, type, livemode, created, payload, processed_at)
         VALUES ($1, $2, false, now(), $3, CASE WHEN $4 THEN now() END)",
    )
    .bind(id)
    .bind(kind)
    .bind(payload)
    .bind(processed)
    .execute(&mut db)
    .await
    .unwrap();
    if !processed {
        sqlx::query(
            "INSERT INTO jobs (kind, payload, max_attempts, attempts, last_error, run_at)
             VALUES ('stripe.process_event', $1, 10, CASE WHEN $2::text IS NULL THEN 0 ELSE 3 END, $2, now() + interval '1 hour')",
        )
        .bind(json!({ "event_id": id }))
        .bind(error)
        .execute(&mut db)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn stripe_events_are_filtered_shown_escaped_and_replayed_with_the_outcome() {
    let app = spawn_web_only_with(|_| {}).await;
    let mut ops = operator(&app).await;
    let updated = event("", "customer.subscription.updated").to_string();
    store_event(
        &app,
        "evt_done",
        "invoice.paid",
        r#"{"id":"evt_done","note":"<script>alert(1)</script>"}"#,
        true,
        None,
    )
    .await;
    store_event(
        &app,
        "evt_waiting",
        "invoice.paid",
        r#"{"id":"evt_waiting"}"#,
        false,
        None,
    )
    .await;
    store_event(
        &app,
        "evt_failing",
        "customer.subscription.updated",
        &updated,
        false,
        Some("no team for customer cus_x yet"),
    )
    .await;
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    store_event(&app, "evt_deep", "invoice.paid", &deep, true, None).await;
    let huge = format!(r#"{{"id":"evt_huge","blob":"{}"}}"#, "x".repeat(300_000));
    store_event(&app, "evt_huge", "invoice.paid", &huge, true, None).await;

    let failing = ops.get("/admin/events?state=failing").await;
    assert_eq!(failing.status, StatusCode::OK);
    assert!(failing.body.contains("evt_failing") && failing.body.contains("no team for customer cus_x yet"));
    assert!(!failing.body.contains("evt_waiting") && !failing.body.contains("evt_done"));
    let waiting = ops.get("/admin/events?state=waiting").await.body;
    assert!(waiting.contains("evt_waiting") && !waiting.contains("evt_failing"));
    let paid = ops
        .get("/admin/events?type=invoice.paid&state=processed")
        .await
        .body;
    assert!(paid.contains("evt_done") && paid.contains("evt_huge") && !paid.contains("evt_failing"));
    for bad in [
        "/admin/events?state=broken",
        "/admin/events?type=%3Cscript%3E",
        "/admin/events?before=yesterday",
        "/admin/jobs?state=all",
        "/admin/emails?status=bounced",
    ] {
        let page = ops.get(bad).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            page.body.contains("must be one of") || page.body.contains("is "),
            "{bad}: {}",
            page.body
        );
    }

    let done = ops.get("/admin/events/evt_done").await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(done.body.contains("&#60;script&#62;alert(1)") && !done.body.contains("<script>alert"));
    assert!(done.body.contains("\n  &#34;note&#34;: "), "pretty-printed");
    let deep = ops.get("/admin/events/evt_deep").await;
    assert_eq!(deep.status, StatusCode::OK, "too deep to parse: shown as stored");
    assert!(deep.body.contains("[[[[1]]]]"));
    let huge = ops.get("/admin/events/evt_huge").await;
    assert_eq!(huge.status, StatusCode::OK);
    assert!(huge.body.contains("Shown up to its first") && huge.body.len() < 120_000);
    assert_eq!(
        ops.get("/admin/events/evt_nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Replaying an event whose processing fails shows why, on the event's page.
    let page = "/admin/events/evt_failing";
    let replayed = act(&mut ops, page, &format!("{page}/replay")).await;
    assert_eq!(
        (replayed.status, replayed.location()),
        (StatusCode::SEE_OTHER, page)
    );
    let shown = ops.get(page).await.body;
    assert!(shown.contains("replay failed:"), "{shown}");
    let replayed = act(
        &mut ops,
        "/admin/events/evt_done",
        "/admin/events/evt_done/replay",
    )
    .await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    assert!(
        ops.get("/admin/events/evt_done")
            .await
            .body
            .contains("replayed: ")
    );
    assert_eq!(
        act(&mut ops, page, "/admin/events/evt_nope/replay").await.status,
        StatusCode::NOT_FOUND
    );
    let rows = audit_rows(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].3.as_deref().unwrap().starts_with("replay failed:"),
        "{rows:?}"
    );
    assert_eq!(
        (rows[1].1.as_str(), rows[1].2.as_str()),
        ("event.replay", "event:evt_done")
    );
}

#[tokio::test]
async fn dead_jobs_are_listed_and_retried_and_emails_never_show_their_bodies() {
    let app = spawn_web_only_with(|_| {}).await;
    let mut ops = operator(&app).await;
    let mut db = app.database.connect().await;
    let dead: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, max_attempts, attempts, status, last_error)
         VALUES ('mail.deliver', '{}', 3, 3, 'dead', 'SMTP said 550 mailbox unavailable') RETURNING id",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO emails (idempotency_key, recipient, subject, text_body, html_body, message_id, status, last_error)
         VALUES ('k1', 'a@example.com', 'Your receipt', 'SECRET BODY TEXT', '<p>SECRET BODY HTML</p>', '<m1@x>', 'failed', '550 5.1.1 no such user'),
                ('k2', 'b@example.com', 'Welcome', 'SECRET BODY TEXT', '<p>SECRET BODY HTML</p>', '<m2@x>', 'sent', NULL)",
    )
    .execute(&mut db)
    .await
    .unwrap();

    let jobs = ops.get("/admin/jobs?state=dead").await.body;
    assert!(jobs.contains("mail.deliver") && jobs.contains("SMTP said 550 mailbox unavailable"));
    let retried = act(&mut ops, "/admin/jobs", &format!("/admin/jobs/{dead}/retry")).await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER);
    let (status, attempts): (String, i32) = sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = $1")
        .bind(dead)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("queued", 0));
    assert!(
        !ops.get("/admin/jobs?state=dead")
            .await
            .body
            .contains("mail.deliver")
    );
    assert_eq!(
        act(&mut ops, "/admin/jobs", "/admin/jobs/999999/retry")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        act(&mut ops, "/admin/jobs", "/admin/jobs/x/retry").await.status,
        StatusCode::NOT_FOUND
    );
    let rows = audit_rows(&app).await;
    assert_eq!(
        rows,
        [(
            "ops@example.com".to_owned(),
            "job.retry".to_owned(),
            format!("job:{dead}"),
            None
        )]
    );

    let failed = ops.get("/admin/emails?status=failed").await.body;
    assert!(failed.contains("Your receipt") && failed.contains("550 5.1.1 no such user"));
    assert!(!failed.contains("Welcome"));
    let all = ops.get("/admin/emails").await.body;
    assert!(
        all.contains("Welcome") && !all.contains("SECRET BODY"),
        "bodies never shown"
    );
}

#[tokio::test]
async fn teams_show_members_billing_and_dunning_and_reconcile_with_stripe_now() {
    use crate::{
        fake_stripe::FakeStripe,
        stripe::{PRO, TEAM, app_with_stripe, stripe_subscription},
    };
    let fake = FakeStripe::start().await;
    fake.add_price(PRO, 1200, "usd", "month");
    fake.add_price(TEAM, 9900, "eur", "year");
    let app = app_with_stripe(&fake).await;
    let mut ops = operator(&app).await;
    let _owner = Visitor::signed_up(&app, "owner@acme.test", PASSWORD).await;
    let _free = Visitor::signed_up(&app, "free@example.com", PASSWORD).await;
    let mut db = app.database.connect().await;
    let team: uuid::Uuid = sqlx::query_scalar(
        "UPDATE teams SET name = 'Acme Inc', stripe_customer_id = 'cus_acme'
         WHERE id = (SELECT team_id FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'owner@acme.test')
         RETURNING id",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    // keel believes: active, 3 seats, a payment failed 2 days ago; Stripe says canceled.
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, quantity, current_period_end, state_as_of, payment_failed_at)
         VALUES ('sub_acme', $1, 'cus_acme', 'active', $2, 3, to_timestamp(1795000000), now() - interval '1 day', now() - interval '2 days')",
    )
    .bind(team)
    .bind(PRO)
    .execute(&mut db)
    .await
    .unwrap();
    fake.put_subscription(stripe_subscription("sub_acme", "cus_acme", "canceled", PRO, None));

    // Monthly recurring revenue: 3 seats at $12.00 a month.
    let overview = ops.get("/admin").await.body;
    assert!(overview.contains("$36.00"), "{overview}");

    for query in ["acm", "owner%40acme", "%40acme.test"] {
        let found = ops.get(&format!("/admin/teams?q={query}")).await.body;
        assert!(found.contains(">Acme Inc</a>"), "{query}: {found}");
        assert!(
            !found.contains("free@example.com&#39;s team") && !found.contains("free@example.com's team"),
            "{query}"
        );
    }
    let page = format!("/admin/teams/{team}");
    let shown = ops.get(&page).await.body;
    assert!(
        shown.contains("owner@acme.test") && shown.contains("pro") && shown.contains("payment failed"),
        "{shown}"
    );

    let reconciled = act(&mut ops, &page, &format!("{page}/reconcile")).await;
    assert_eq!(
        (reconciled.status, reconciled.location()),
        (StatusCode::SEE_OTHER, page.as_str())
    );
    let status: String = sqlx::query_scalar("SELECT status FROM subscriptions WHERE id = 'sub_acme'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "canceled");
    let listed: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/subscriptions")
        .collect();
    assert_eq!(
        listed.last().unwrap().param("customer"),
        Some("cus_acme"),
        "only this team's customer"
    );
    let shown = ops.get(&page).await.body;
    assert!(
        shown.contains("checked 1 subscriptions in Stripe: 1 repaired"),
        "{shown}"
    );
    assert!(
        shown.contains("reconcile: updated sub_acme"),
        "the billing audit log"
    );

    let free: uuid::Uuid = sqlx::query_scalar("SELECT team_id FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'free@example.com'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let free_page = format!("/admin/teams/{free}");
    assert_eq!(
        act(&mut ops, &free_page, &format!("{free_page}/reconcile"))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        ops.get("/admin/teams/00000000-0000-0000-0000-000000000000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ops.get("/admin/teams?before=nonsense").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn an_operator_views_the_product_as_a_user_for_30_minutes_with_a_banner_and_stops() {
    let app = spawn_web_only_with(|_| {}).await;
    let mut ops = operator(&app).await;
    let mut customer = Visitor::signed_up(&app, "customer@example.com", PASSWORD).await;
    let id = user_id(&app, "customer@example.com").await;
    let page = format!("/admin/users/{id}");
    let own_session = ops.session().unwrap().clone();

    let started = act(&mut ops, &page, &format!("{page}/impersonate")).await;
    assert_eq!(
        (started.status, started.location()),
        (StatusCode::SEE_OTHER, "/dashboard")
    );
    assert_ne!(ops.session().unwrap(), &own_session, "a session of its own");
    let dashboard = ops.get("/dashboard").await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(
        dashboard.body.contains(
            "<strong>ops@example.com</strong> is viewing the product as <strong>customer@example.com</strong>"
        ),
        "{}",
        dashboard.body
    );
    assert!(
        ops.get("/settings")
            .await
            .body
            .contains("/admin/impersonation/stop"),
        "the banner on every page"
    );
    // The user sees that support is in, on their own sessions page.
    let theirs = customer.get("/settings/sessions").await.body;
    assert!(
        theirs.contains("Support, through the operator console"),
        "{theirs}"
    );
    let expires: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM sessions WHERE impersonator_id IS NOT NULL",
    )
    .fetch_one(&mut app.database.connect().await)
    .await
    .unwrap();
    assert!((expires - 1800.0).abs() < 5.0, "30 minutes: {expires}");

    // While impersonating: the console and the account's sign-in forms are refused.
    assert_eq!(ops.get("/admin").await.status, StatusCode::FORBIDDEN);
    assert_eq!(ops.get("/admin/users").await.status, StatusCode::FORBIDDEN);
    for (action, fields) in [
        (
            "/settings/password",
            vec![
                ("current_password", PASSWORD),
                ("new_password", "another password 2"),
            ],
        ),
        (
            "/settings/email",
            vec![("email", "taken-over@example.com"), ("password", PASSWORD)],
        ),
        ("/settings/2fa/enable", vec![("code", "123456")]),
        ("/settings/2fa/disable", vec![("password", PASSWORD)]),
        ("/settings/sessions/revoke-others", vec![]),
        (
            "/settings/delete",
            vec![("password", PASSWORD), ("confirm", "customer@example.com")],
        ),
    ] {
        let refused = ops.submit("/settings", action, &fields).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{action}");
    }
    let revoke = format!("/settings/sessions/{}/revoke", uuid::Uuid::new_v4());
    assert_eq!(
        ops.submit("/settings", &revoke, &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'customer@example.com'")
        .fetch_one(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(still, 1);

    let stopped = ops.submit("/dashboard", "/admin/impersonation/stop", &[]).await;
    assert_eq!(
        (stopped.status, stopped.location()),
        (StatusCode::SEE_OTHER, page.as_str())
    );
    assert_eq!(
        ops.session().unwrap(),
        &own_session,
        "the operator's own session back"
    );
    assert_eq!(ops.get(&page).await.status, StatusCode::OK);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE impersonator_id IS NOT NULL")
        .fetch_one(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(left, 0, "the impersonation session is gone");
    // Stopping again, or without impersonating: 404.
    assert_eq!(
        ops.submit("/dashboard", "/admin/impersonation/stop", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Both audit logs: the user's (security log, and their team's) and the operator's.
    let mut db = app.database.connect().await;
    let security: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM security_log WHERE user_id = $1 AND event LIKE 'impersonation%' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(security, ["impersonation_started", "impersonation_stopped"]);
    let team: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor_email, action, subject FROM team_audit_log WHERE action LIKE 'support.%' ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        team,
        [
            (
                "ops@example.com".to_owned(),
                "support.impersonation_started".to_owned(),
                "customer@example.com".to_owned()
            ),
            (
                "ops@example.com".to_owned(),
                "support.impersonation_stopped".to_owned(),
                "customer@example.com".to_owned()
            ),
        ]
    );
    let actions: Vec<String> = audit_rows(&app).await.into_iter().map(|row| row.1).collect();
    assert_eq!(actions, ["user.impersonate", "user.impersonation_stop"]);

    // An impersonation that ran out: stop still gives the operator's session back.
    act(&mut ops, &page, &format!("{page}/impersonate")).await;
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE impersonator_id IS NOT NULL",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(
        ops.get("/dashboard").await.status,
        StatusCode::SEE_OTHER,
        "ran out"
    );
    let stopped = ops.submit("/login", "/admin/impersonation/stop", &[]).await;
    assert_eq!(
        (stopped.status, stopped.location()),
        (StatusCode::SEE_OTHER, "/admin")
    );
    assert_eq!(ops.session().unwrap(), &own_session);
    assert_eq!(ops.get("/admin").await.status, StatusCode::OK);

    // Not oneself; not a disabled user.
    let me = user_id(&app, "ops@example.com").await;
    let mine = format!("/admin/users/{me}");
    assert_eq!(
        act(&mut ops, &mine, &format!("{mine}/impersonate")).await.status,
        StatusCode::CONFLICT
    );
    act(&mut ops, &page, &format!("{page}/disable")).await;
    assert_eq!(
        act(&mut ops, &page, &format!("{page}/impersonate")).await.status,
        StatusCode::CONFLICT
    );
}

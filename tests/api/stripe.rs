//! Calls to Stripe end to end: checkout, the portal, prices on `/pricing`, reconciliation and
//! what the pages do while Stripe is failing or hanging. Stripe is the tests' fake
//! ([`FakeStripe`]), spoken to over HTTP exactly as the real one.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    fake_stripe::{FakeStripe, Mode},
    helpers::{TestApp, database_server_url, run_keel_async, spawn_app_with, wait_until},
    visitor::Visitor,
};

const SECRET_KEY: &str = "sk_test_keel_stripe_tests";
const WEBHOOK_SECRET: &str = "whsec_stripe_tests";
pub const PRO: &str = "price_1SaaSTestMonthly000000A1";
pub const TEAM: &str = "price_1SaaSTestYearly0000000B2";
const PASSWORD: &str = "correct horse battery";

/// The app wired to a fake Stripe, once the first attempt of its start-up reconciliation (the
/// daily job's first run, against the empty fake) is over, so that it cannot take a failure
/// meant for a test.
pub async fn app_with_stripe(fake: &FakeStripe) -> TestApp {
    app_with_prices(fake, format!("pro={PRO},team={TEAM}")).await
}

/// [`app_with_stripe`] with `STRIPE_PRICES` = `prices`.
async fn app_with_prices(fake: &FakeStripe, prices: String) -> TestApp {
    let url = fake.url();
    let app = spawn_app_with(|env| {
        env.insert("STRIPE_SECRET_KEY", SECRET_KEY.into());
        env.insert("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.into());
        env.insert("STRIPE_API_BASE", url);
        env.insert("STRIPE_PRICES", prices);
    })
    .await;
    // Scheduled, and its first attempt over (done, or failed and waiting to retry).
    wait_for_count(
        &app,
        "the start-up reconciliation",
        "SELECT (SELECT count(*) FROM jobs WHERE kind = 'stripe.reconcile' AND (attempts = 0 OR status = 'running'))
              + 1 - (SELECT count(*) FROM job_schedules WHERE name = 'reconcile-subscriptions')",
        0,
    )
    .await;
    app
}

/// Polls the count `sql` returns in the app's database until it is `want` (20 s at most).
async fn wait_for_count(app: &TestApp, what: &str, sql: &'static str, want: i64) {
    let pool = sqlx::PgPool::connect(&app.database.url()).await.unwrap();
    wait_until(what, Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let count: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            if count == want {
                Ok(())
            } else {
                Err(format!("{count}, not {want}"))
            }
        }
    })
    .await;
}

/// The environment of `keel stripe …` run against the app's database and the fake.
fn cli_env(app: &TestApp, fake: &FakeStripe) -> Vec<(&'static str, String)> {
    vec![
        (
            "DATABASE_URL",
            format!("{}/{}", database_server_url(), app.database.name),
        ),
        ("STRIPE_SECRET_KEY", SECRET_KEY.to_owned()),
        ("STRIPE_API_BASE", fake.url()),
        ("APP_ENV", "development".to_owned()),
    ]
}

async fn signed_up<'a>(app: &'a TestApp, email: &str) -> Visitor<'a> {
    Visitor::signed_up(app, email, PASSWORD).await
}

async fn team_of(app: &TestApp, email: &str) -> Uuid {
    let mut db = app.database.connect().await;
    sqlx::query_scalar(
        "SELECT m.team_id FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_one(&mut db)
    .await
    .unwrap()
}

async fn stored_customer(app: &TestApp, team: Uuid) -> Option<String> {
    let mut db = app.database.connect().await;
    sqlx::query_scalar("SELECT stripe_customer_id FROM teams WHERE id = $1")
        .bind(team)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn checkout_sends_the_team_to_stripe_with_one_customer_for_good() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "owner@example.com").await;
    let team = team_of(&app, "owner@example.com").await;

    let billing = owner.get("/billing").await;
    assert!(billing.body.contains("Subscribe to Pro"), "{}", billing.body);
    let first = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    assert!(
        first
            .location()
            .starts_with("https://checkout.stripe.com/c/pay/cs_test_"),
        "{}",
        first.location()
    );

    let requests = fake.requests();
    let created = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/v1/customers")
        .expect("a customer was created");
    assert_eq!(
        created.idempotency_key.as_deref(),
        Some(format!("keel-customer-{team}").as_str())
    );
    assert_eq!(created.param("email"), Some("owner@example.com"));
    assert_eq!(
        created.param("metadata[team_id]"),
        Some(team.to_string().as_str())
    );
    let session = requests
        .iter()
        .find(|r| r.path == "/v1/checkout/sessions")
        .expect("a checkout session was created");
    assert_eq!(
        session.authorization.as_deref(),
        Some(format!("Bearer {SECRET_KEY}").as_str())
    );
    assert_eq!(session.stripe_version.as_deref(), Some("2026-09-30.endive"));
    assert!(
        session
            .idempotency_key
            .as_deref()
            .is_some_and(|key| key.starts_with("keel-checkout-"))
    );
    let customer = stored_customer(&app, team).await.expect("the customer is kept");
    for (key, expected) in [
        ("mode", "subscription"),
        ("customer", customer.as_str()),
        ("client_reference_id", &team.to_string()),
        ("line_items[0][price]", PRO),
        ("line_items[0][quantity]", "1"),
        ("subscription_data[metadata][team_id]", &team.to_string()),
        // What checkout.session.completed checks before linking the customer (issue 18).
        ("metadata[team_id]", &team.to_string()),
        ("cancel_url", "http://127.0.0.1/pricing"),
        (
            "success_url",
            "http://127.0.0.1/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}",
        ),
    ] {
        assert_eq!(session.param(key), Some(expected), "{key}");
    }

    // Another checkout (a change of mind before paying) reuses the customer.
    let second = owner
        .submit("/billing", "/billing/checkout", &[("plan", "team")])
        .await;
    assert_eq!(second.status, StatusCode::SEE_OTHER);
    assert_eq!(fake.count("POST", "/v1/customers"), 1);
    let sessions: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/checkout/sessions")
        .collect();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1].param("customer"), Some(customer.as_str()));
    assert_eq!(sessions[1].param("line_items[0][price]"), Some(TEAM));
    assert_ne!(sessions[0].idempotency_key, sessions[1].idempotency_key);

    // Back from Stripe before the webhooks: thanked, not told to subscribe.
    let back = owner.get("/billing?checkout=success&session_id=cs_test_1").await;
    assert!(back.body.contains("Your payment went through"), "{}", back.body);
}

/// Six checkouts of the pro plan by `owner` at once (a double click, several tabs).
async fn racing_checkouts(app: &TestApp, owner: &mut Visitor<'_>) -> Vec<reqwest::Response> {
    let token = owner.get("/billing").await.csrf_token();
    let cookie = owner.cookie_header();
    let checkouts = (0..6).map(|_| {
        app.client
            .post(app.url("/billing/checkout"))
            .header("cookie", &cookie)
            .form(&[("plan", "pro"), ("csrf_token", &token)])
            .send()
    });
    join_all(checkouts)
        .await
        .into_iter()
        .map(|response| response.expect("checkout answered"))
        .collect()
}

#[tokio::test]
async fn racing_checkouts_of_a_new_team_make_one_customer() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "racer@example.com").await;
    for response in racing_checkouts(&app, &mut owner).await {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    let customers: std::collections::HashSet<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/checkout/sessions")
        .map(|r| r.param("customer").unwrap().to_owned())
        .collect();
    assert_eq!(
        customers.len(),
        1,
        "every checkout used the same customer: {customers:?}"
    );
    let team = team_of(&app, "racer@example.com").await;
    assert_eq!(
        stored_customer(&app, team).await.as_ref(),
        customers.iter().next()
    );
    // And Stripe holds one customer: every create carried the team's idempotency key.
    let keys: std::collections::HashSet<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/customers")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys, [Some(format!("keel-customer-{team}"))].into());
}

/// Issue 18, finding 8: two checkouts started before the first one's webhooks arrive must not
/// become two subscriptions. Parallel POSTs of one team (a double click, two tabs) take turns:
/// the first opens a session, the others are sent to the same one.
#[tokio::test]
async fn parallel_checkouts_of_one_team_open_at_most_one_checkout_session() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "double@example.com").await;
    let mut locations = std::collections::HashSet::new();
    for response in racing_checkouts(&app, &mut owner).await {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        locations.insert(response.headers()["location"].to_str().unwrap().to_owned());
    }
    let open = fake.open_checkout_sessions();
    assert_eq!(open.len(), 1, "open Checkout Sessions in Stripe: {open:#?}");
    assert_eq!(
        locations,
        [open[0]["url"].as_str().unwrap().to_owned()].into(),
        "every checkout was sent to the one open session"
    );
}

/// Finding 8: the team's open session is reused for the same plan, expired (through Stripe's
/// API) before a session for another plan is opened, so at most one can ever be paid.
#[tokio::test]
async fn a_second_checkout_reuses_the_open_session_or_expires_it_first() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "twice@example.com").await;
    let first = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    let again = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.body);
    assert_eq!(again.location(), first.location(), "the open session is reused");
    assert_eq!(fake.count("POST", "/v1/checkout/sessions"), 1);

    let other_plan = owner
        .submit("/billing", "/billing/checkout", &[("plan", "team")])
        .await;
    assert_eq!(other_plan.status, StatusCode::SEE_OTHER, "{}", other_plan.body);
    assert_ne!(other_plan.location(), first.location());
    let sessions = fake.checkout_sessions();
    let first_id = sessions[0]["id"].as_str().unwrap();
    let expire = format!("/v1/checkout/sessions/{first_id}/expire");
    assert_eq!(fake.count("POST", &expire), 1, "the first session was expired");
    let expired_at = fake.requests().iter().position(|r| r.path == expire).unwrap();
    let created_at = fake
        .requests()
        .iter()
        .rposition(|r| r.method == "POST" && r.path == "/v1/checkout/sessions")
        .unwrap();
    assert!(expired_at < created_at, "expired before the new one was created");
    assert_eq!(sessions[0]["status"], "expired");
    let open = fake.open_checkout_sessions();
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["url"].as_str(), Some(other_plan.location()));
}

/// Finding 8: a session paid a moment ago, whose webhooks have not arrived, already is a
/// subscription: another checkout is refused (409) rather than opening a second one.
#[tokio::test]
async fn a_checkout_paid_before_its_webhooks_arrive_refuses_another() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "paid@example.com").await;
    let first = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    let id = fake.checkout_sessions()[0]["id"].as_str().unwrap().to_owned();
    fake.complete_checkout_session(&id, "sub_paid_moments_ago");

    for plan in ["pro", "team"] {
        let second = owner
            .submit("/billing", "/billing/checkout", &[("plan", plan)])
            .await;
        assert_eq!(second.status, StatusCode::CONFLICT, "{plan}: {}", second.body);
        assert!(second.body.contains("last checkout was paid"), "{}", second.body);
    }
    assert_eq!(fake.count("POST", "/v1/checkout/sessions"), 1);

    // Once keel knows that subscription, and it has ended, the team may subscribe again.
    let team = team_of(&app, "paid@example.com").await;
    store_subscription(&app, team, "sub_paid_moments_ago", "cus_x", "canceled").await;
    let later = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(later.status, StatusCode::SEE_OTHER, "{}", later.body);
    assert_eq!(fake.open_checkout_sessions().len(), 1);
}

#[tokio::test]
async fn checkout_refuses_what_it_must() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;

    // Not signed in: to the login page, nothing asked of Stripe.
    let mut stranger = Visitor::new(&app);
    let token = stranger.get("/login").await.csrf_token();
    let page = stranger
        .post("/billing/checkout", &[("plan", "pro"), ("csrf_token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location().starts_with("/login"), "{}", page.location());

    let mut owner = signed_up(&app, "careful@example.com").await;
    let no_token = owner.post("/billing/checkout", &[("plan", "pro")]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let unknown = owner
        .submit("/billing", "/billing/checkout", &[("plan", "gold")])
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.body.contains("There is no plan called"),
        "{}",
        unknown.body
    );
    let missing = owner.submit("/billing", "/billing/checkout", &[]).await;
    assert!(missing.status.is_client_error(), "{}", missing.status);
    assert_eq!(fake.count("POST", "/v1/checkout/sessions"), 0);

    // A team already subscribed changes plans in the portal: a second checkout would charge twice.
    let team = team_of(&app, "careful@example.com").await;
    store_subscription(&app, team, "sub_existing", "cus_existing", "active").await;
    let twice = owner
        .submit("/billing", "/billing/checkout", &[("plan", "team")])
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert!(
        twice.body.contains("already has a subscription"),
        "{}",
        twice.body
    );
    assert_eq!(fake.count("POST", "/v1/checkout/sessions"), 0);
}

#[tokio::test]
async fn the_portal_opens_for_a_team_with_a_customer() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "portal@example.com").await;

    // Never checked out: nothing to manage, shown the plans.
    let early = owner.submit("/billing", "/billing/portal", &[]).await;
    assert_eq!(early.status, StatusCode::SEE_OTHER);
    assert_eq!(early.location(), "/pricing");
    assert_eq!(fake.count("POST", "/v1/billing_portal/sessions"), 0);

    owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    let team = team_of(&app, "portal@example.com").await;
    let customer = stored_customer(&app, team).await.unwrap();
    let portal = owner.submit("/billing", "/billing/portal", &[]).await;
    assert_eq!(portal.status, StatusCode::SEE_OTHER);
    assert!(
        portal
            .location()
            .starts_with("https://billing.stripe.com/p/session/"),
        "{}",
        portal.location()
    );
    let request = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/billing_portal/sessions")
        .unwrap();
    assert_eq!(request.param("customer"), Some(customer.as_str()));
    assert_eq!(request.param("return_url"), Some("http://127.0.0.1/billing"));
    assert!(request.idempotency_key.is_some());
}

#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_idempotency_key() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "retry@example.com").await;
    let token = owner.get("/billing").await.csrf_token();

    fake.set_mode(Mode::FailNext(1));
    let page = owner
        .post("/billing/checkout", &[("plan", "pro"), ("csrf_token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/customers")
        .collect();
    assert_eq!(creates.len(), 2, "the 500 was retried");
    assert_eq!(creates[0].idempotency_key, creates[1].idempotency_key);
}

/// A subscription of `team` to the pro plan, as keel would have stored it from Stripe.
async fn store_subscription(app: &TestApp, team: Uuid, id: &str, customer: &str, status: &str) {
    let mut db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, state_as_of)
         VALUES ($1, $2, $3, $4, $5, now())",
    )
    .bind(id)
    .bind(team)
    .bind(customer)
    .bind(status)
    .bind(PRO)
    .execute(&mut db)
    .await
    .unwrap();
}

/// Delivers `event` to the webhook, signed, and expects it acknowledged.
async fn deliver(app: &TestApp, event: &str) {
    let delivered = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("stripe-signature", signature(event))
        .header("content-type", "application/json")
        .body(event.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), StatusCode::OK);
}

/// The signed `Stripe-Signature` header for `body`, now.
fn signature(body: &str) -> String {
    crate::helpers::stripe_signature(WEBHOOK_SECRET, body.as_bytes())
}

#[tokio::test]
async fn while_stripe_is_down_pages_answer_fast_and_webhooks_still_ingest() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "outage@example.com").await;
    let token = owner.get("/billing").await.csrf_token();
    let checkout = [("plan", "pro"), ("csrf_token", token.as_str())];

    // Hanging: the page gives up after ~2 s with a page that says what happened.
    fake.set_mode(Mode::Hang);
    let started = Instant::now();
    let page = owner.post("/billing/checkout", &checkout).await;
    let waited = started.elapsed();
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("Nothing was charged"), "{}", page.body);
    assert!(page.headers.contains_key("retry-after"));
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");

    // Failing: retried a little, then the circuit opens and pages stop waiting at all.
    fake.set_mode(Mode::Fail(500));
    for _ in 0..3 {
        let page = owner.post("/billing/checkout", &checkout).await;
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let asked = fake.requests().len();
    let started = Instant::now();
    let page = owner.post("/billing/checkout", &checkout).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        fake.requests().len(),
        asked,
        "the open circuit asked Stripe nothing"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("keel_stripe_circuit_open 1"), "{metrics}");
    assert!(metrics.contains("outcome=\"circuit_open\""), "{metrics}");

    // The pricing page still shows the plans, by name.
    let pricing = owner.get("/pricing").await;
    assert_eq!(pricing.status, StatusCode::OK);
    assert!(pricing.body.contains("Choose Pro") && pricing.body.contains("Price shown at checkout"));

    // Webhooks need no call to Stripe: still stored and acknowledged.
    let event = json!({"id": "evt_during_outage", "object": "event", "type": "customer.updated",
                       "created": 1_700_000_000, "livemode": false, "data": {"object": {"id": "cus_x"}}})
    .to_string();
    deliver(&app, &event).await;

    // Stripe is back: after the cooldown one trial call closes the circuit.
    fake.set_mode(Mode::Normal);
    tokio::time::sleep(keel::billing::stripe::BREAKER_COOLDOWN).await;
    let page = owner.post("/billing/checkout", &checkout).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("keel_stripe_circuit_open 0"), "{metrics}");
}

/// Issue 18, finding 4: an event of the other mode than `STRIPE_SECRET_KEY`'s (here live
/// events under an `sk_test_` key) is stored and marked processed, and changes nothing.
#[tokio::test]
async fn a_live_mode_event_under_a_test_key_changes_nothing_and_is_marked_processed() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "modes@example.com").await;
    let team = team_of(&app, "modes@example.com").await;
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let checkout = |id: &str, livemode: bool| {
        json!({"id": id, "object": "event", "type": "checkout.session.completed", "created": created,
               "livemode": livemode, "data": {"object": {
                   "id": "cs_live_1", "object": "checkout.session", "mode": "subscription",
                   "client_reference_id": team.to_string(), "customer": "cus_live_mode",
                   "metadata": {"team_id": team.to_string()}, "livemode": livemode}}})
    };
    let mut subscription = stripe_subscription("sub_live_mode", "cus_live_mode", "active", PRO, Some(team));
    subscription["livemode"] = json!(true);
    let subscribed = json!({"id": "evt_live_sub", "object": "event", "type": "customer.subscription.created",
                            "created": created, "livemode": true, "data": {"object": subscription}});
    for event in [checkout("evt_live_checkout", true), subscribed] {
        let body = event.to_string();
        deliver(&app, &body).await;
    }
    wait_for_count(
        &app,
        "both events processed",
        "SELECT count(*) FROM stripe_events WHERE processed_at IS NOT NULL",
        2,
    )
    .await;
    assert_eq!(stored_customer(&app, team).await, None, "no customer linked");
    let mut db = app.database.connect().await;
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(subscriptions, 0, "no subscription stored");
    let pro = owner.get("/pro").await;
    assert_eq!((pro.status, pro.location()), (StatusCode::SEE_OTHER, "/billing"));
    // A finished job is deleted: none is left to be retried.
    wait_for_count(
        &app,
        "the processing jobs finished",
        "SELECT count(*) FROM jobs WHERE kind = 'stripe.process_event'",
        0,
    )
    .await;

    // The same checkout in test mode is applied: the mode alone made the difference.
    let body = checkout("evt_test_checkout", false).to_string();
    deliver(&app, &body).await;
    wait_for_count(
        &app,
        "the test-mode event processed",
        "SELECT count(*) FROM stripe_events WHERE processed_at IS NOT NULL",
        3,
    )
    .await;
    assert_eq!(
        stored_customer(&app, team).await.as_deref(),
        Some("cus_live_mode")
    );
}

/// Reads the app's cached price list straight from Redis.
async fn cached_prices(app: &TestApp) -> Option<String> {
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(format!("keel_test:{}:stripe:prices:v1", app.database.name))
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn pricing_shows_stripe_amounts_cached_and_the_last_known_while_stripe_is_down() {
    let fake = FakeStripe::start().await;
    fake.add_price(PRO, 1200, "usd", "month");
    fake.add_price(TEAM, 9900, "eur", "year");
    let app = app_with_stripe(&fake).await;

    let page = app.get("/pricing").await.text().await.unwrap();
    assert!(page.contains("$12.00 per month"), "{page}");
    assert!(page.contains("€99.00 per year"), "{page}");
    let again = app.get("/pricing").await.text().await.unwrap();
    assert!(again.contains("$12.00 per month"));
    assert_eq!(
        fake.count("GET", &format!("/v1/prices/{PRO}")),
        1,
        "served from the cache"
    );
    let cached = cached_prices(&app).await.expect("the prices are in Redis");
    assert!(cached.contains("\"unit_amount\":1200"), "{cached}");

    // Another instance, Stripe down, nothing in its Redis: plan names only.
    let broken = FakeStripe::start().await;
    broken.set_mode(Mode::Fail(503));
    let other = app_with_stripe(&broken).await;
    let names = other.get("/pricing").await.text().await.unwrap();
    assert!(
        names.contains("Choose Pro") && names.contains("Price shown at checkout"),
        "{names}"
    );
    assert!(!names.contains("$12.00"));

    // The same instance once a price list is in its Redis, hours old: shown rather than nothing.
    let mut stale: Value = serde_json::from_str(&cached).unwrap();
    stale["fetched_at"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 5 * 3600);
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("keel_test:{}:stripe:prices:v1", other.database.name))
        .arg(stale.to_string())
        .query_async(&mut connection)
        .await
        .unwrap();
    let last_known = other.get("/pricing").await.text().await.unwrap();
    assert!(last_known.contains("$12.00 per month"), "{last_known}");
}

/// A subscription as Stripe lists it (basil shape: the period on the item).
pub fn stripe_subscription(id: &str, customer: &str, status: &str, price: &str, team: Option<Uuid>) -> Value {
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": status,
        "cancel_at_period_end": false, "created": 1_763_000_000, "livemode": false,
        "metadata": team.map_or(json!({}), |team| json!({"team_id": team.to_string()})),
        "items": {"object": "list", "data": [{
            "id": format!("si_{id}"), "object": "subscription_item",
            "current_period_end": 1_795_000_000, "current_period_start": 1_763_000_000,
            "price": {"id": price, "object": "price"}
        }]}
    })
}

#[tokio::test]
async fn reconcile_repairs_drift_the_webhooks_never_reported() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let mut owner = signed_up(&app, "drift@example.com").await;
    let team = team_of(&app, "drift@example.com").await;
    let _other = signed_up(&app, "missed@example.com").await;
    let other_team = team_of(&app, "missed@example.com").await;
    let mut db = app.database.connect().await;
    // keel believes the owner's team is active; Stripe canceled it (the webhook was lost).
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, current_period_end, state_as_of)
         VALUES ('sub_drifted', $1, 'cus_drift', 'active', $2, to_timestamp(1795000000), now() - interval '1 day')",
    )
    .bind(team)
    .bind(PRO)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(owner.get("/pro").await.status, StatusCode::OK);
    fake.put_subscription(stripe_subscription(
        "sub_drifted",
        "cus_drift",
        "canceled",
        PRO,
        None,
    ));
    // A subscription whose every event was lost; its metadata names the team.
    fake.put_subscription(stripe_subscription(
        "sub_missed",
        "cus_missed",
        "active",
        TEAM,
        Some(other_team),
    ));
    // More than one page (Stripe's pages hold at most 100) of subscriptions of no team here.
    for n in 0..101 {
        fake.put_subscription(stripe_subscription(
            &format!("sub_stranger{n}"),
            "cus_stranger",
            "active",
            PRO,
            None,
        ));
    }

    let env = cli_env(&app, &fake);
    let (code, output) = run_keel_async(&["stripe", "reconcile"], env.clone()).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(
            "checked 103 subscriptions in Stripe: 2 repaired (1 created, 1 updated), 101 without a team, 0 known here but not in Stripe, 0 seat counts corrected"
        ),
        "{output}"
    );
    let pages: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/subscriptions")
        .collect();
    let last = pages.last().unwrap();
    assert_eq!(last.param("status"), Some("all"));
    assert_eq!(
        last.param("starting_after"),
        Some("sub_stranger97"),
        "paged on after the first 100"
    );

    let status: String = sqlx::query_scalar("SELECT status FROM subscriptions WHERE id = 'sub_drifted'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "canceled");
    let found: (Uuid, String) =
        sqlx::query_as("SELECT team_id, status FROM subscriptions WHERE id = 'sub_missed'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(found, (other_team, "active".to_owned()));
    let audit: Vec<(String, String, Option<Value>, Value)> = sqlx::query_as(
        "SELECT subscription_id, action, before, after FROM billing_audit_log ORDER BY subscription_id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_str()),
        ("sub_drifted", "updated")
    );
    assert_eq!(audit[0].2.as_ref().unwrap()["status"], "active");
    assert_eq!(audit[0].3["status"], "canceled");
    assert_eq!(
        (audit[1].0.as_str(), audit[1].1.as_str(), &audit[1].2),
        ("sub_missed", "created", &None)
    );
    // Access follows Stripe now.
    let pro = owner.get("/pro").await;
    assert_eq!((pro.status, pro.location()), (StatusCode::SEE_OTHER, "/billing"));

    // Nothing left to repair; a row Stripe does not know is reported, not deleted.
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, state_as_of)
         VALUES ('sub_only_here', $1, 'cus_x', 'active', now())",
    )
    .bind(other_team)
    .execute(&mut db)
    .await
    .unwrap();
    let (code, output) = run_keel_async(&["stripe", "reconcile"], env).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(
            "0 repaired (0 created, 0 updated), 101 without a team, 1 known here but not in Stripe"
        ),
        "{output}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE id = 'sub_only_here'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn reconciliation_never_undoes_a_newer_webhook() {
    let fake = FakeStripe::start().await;
    let app = app_with_stripe(&fake).await;
    let _owner = signed_up(&app, "newer@example.com").await;
    let team = team_of(&app, "newer@example.com").await;
    let mut db = app.database.connect().await;
    // An event from a minute in the future (as seen from the listing) already applied.
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, state_as_of)
         VALUES ('sub_newer', $1, 'cus_newer', 'past_due', $2, now() + interval '1 minute')",
    )
    .bind(team)
    .bind(PRO)
    .execute(&mut db)
    .await
    .unwrap();
    fake.put_subscription(stripe_subscription("sub_newer", "cus_newer", "active", PRO, None));
    let env = cli_env(&app, &fake);
    let (code, output) = run_keel_async(&["stripe", "reconcile"], env).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("0 repaired"), "{output}");
    let status: String = sqlx::query_scalar("SELECT status FROM subscriptions WHERE id = 'sub_newer'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "past_due");
}

#[tokio::test]
async fn the_daily_job_reconciles_and_counts_its_repairs() {
    let fake = FakeStripe::start().await;
    // Scheduled at start (app_with_stripe waits for that first run, against the empty fake).
    let app = app_with_stripe(&fake).await;
    let _owner = signed_up(&app, "daily@example.com").await;
    let team = team_of(&app, "daily@example.com").await;
    fake.put_subscription(stripe_subscription(
        "sub_daily",
        "cus_daily",
        "active",
        PRO,
        Some(team),
    ));
    // The next day's run, queued now rather than after midnight.
    let mut db = app.database.connect().await;
    keel::jobs::enqueue(&mut db, &keel::billing::reconcile::ReconcileSubscriptions)
        .await
        .unwrap();
    wait_for_count(
        &app,
        "the repair",
        "SELECT count(*) FROM billing_audit_log WHERE subscription_id = 'sub_daily'",
        1,
    )
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("keel_stripe_reconcile_repairs_total{action=\"created\"}"),
        "{metrics}"
    );
}

// ---- per-seat plans ----

/// `n` members added to `team` (without the signup form), their ids.
async fn add_members(app: &TestApp, team: Uuid, prefix: &str, n: usize) -> Vec<Uuid> {
    let mut db = app.database.connect().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id: Uuid = sqlx::query_scalar(
            "WITH u AS (INSERT INTO users (email, password_hash) VALUES ($1, 'not a hash') RETURNING id)
             INSERT INTO memberships (team_id, user_id, role) SELECT $2, id, 'member' FROM u RETURNING user_id",
        )
        .bind(format!("{prefix}{i}@example.com"))
        .bind(team)
        .fetch_one(&mut db)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

/// The per-seat subscription `id` of `team` as Stripe holds it, with `quantity` seats.
fn seat_subscription(id: &str, team: Uuid, quantity: u64) -> Value {
    let mut subscription = stripe_subscription(id, "cus_seats", "active", TEAM, Some(team));
    subscription["items"]["data"][0]["quantity"] = quantity.into();
    subscription
}

/// Waits until the fake's subscription `id` has `want` seats.
async fn wait_for_seats(fake: &FakeStripe, id: &str, want: u64) {
    wait_until(
        &format!("{want} seats in Stripe"),
        Duration::from_secs(20),
        || {
            let quantity = fake
                .subscription(id)
                .map(|s| s["items"]["data"][0]["quantity"].clone());
            async move {
                match quantity {
                    Some(quantity) if quantity == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
}

fn seat_updates(fake: &FakeStripe, id: &str) -> usize {
    fake.count("POST", &format!("/v1/subscriptions/{id}"))
}

#[tokio::test]
async fn a_per_seat_plan_bills_the_member_count_as_members_join_and_leave() {
    let fake = FakeStripe::start().await;
    let app = app_with_prices(&fake, format!("pro={PRO},team={TEAM}:per_seat")).await;
    let mut owner = signed_up(&app, "seats@example.com").await;
    let team = team_of(&app, "seats@example.com").await;
    let members = add_members(&app, team, "seat", 2).await;

    // Checkout asks for one seat per member.
    let page = owner
        .submit("/billing", "/billing/checkout", &[("plan", "team")])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let requests = fake.requests();
    let checkout = requests
        .iter()
        .find(|r| r.path == "/v1/checkout/sessions")
        .unwrap();
    assert_eq!(checkout.param("line_items[0][quantity]"), Some("3"));
    // A plan that is not per seat: one.
    let pro = owner
        .submit("/billing", "/billing/checkout", &[("plan", "pro")])
        .await;
    assert_eq!(pro.status, StatusCode::SEE_OTHER);
    let requests = fake.requests();
    let last = requests
        .iter()
        .rev()
        .find(|r| r.path == "/v1/checkout/sessions")
        .unwrap();
    assert_eq!(last.param("line_items[0][quantity]"), Some("1"));

    // The subscription arrives with 3 seats; /billing shows them.
    fake.put_subscription(seat_subscription("sub_seats", team, 3));
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let event = json!({"id": "evt_seats", "object": "event", "type": "customer.subscription.created",
                       "created": created, "livemode": false,
                       "data": {"object": seat_subscription("sub_seats", team, 3)}});
    deliver(&app, &event.to_string()).await;
    wait_for_count(
        &app,
        "the subscription stored",
        "SELECT count(*) FROM subscriptions WHERE quantity = 3",
        1,
    )
    .await;
    let billing = owner.get("/billing").await;
    assert!(
        billing.body.contains("<dt>Seats</dt><dd>3</dd>"),
        "{}",
        billing.body
    );
    // The team's audit log has the checkouts (by the owner, from their address) and Stripe's news.
    let mut db = app.database.connect().await;
    let audit: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', action, subject, detail, actor_email, host(client_ip))
         FROM team_audit_log WHERE team_id = $1 ORDER BY id",
    )
    .bind(team)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        audit,
        [
            "billing.checkout_started team seats@example.com 127.0.0.1",
            "billing.checkout_started pro seats@example.com 127.0.0.1",
            "subscription.status_changed sub_seats active",
        ]
    );

    // A removal: 2 seats within seconds, through one update with an idempotency key.
    let before = seat_updates(&fake, "sub_seats");
    let removed = owner
        .submit("/team", &format!("/team/members/{}/remove", members[0]), &[])
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    wait_for_seats(&fake, "sub_seats", 2).await;
    let requests = fake.requests();
    let update = requests
        .iter()
        .rev()
        .find(|r| r.path == "/v1/subscriptions/sub_seats")
        .unwrap();
    assert_eq!(update.param("items[0][id]"), Some("si_sub_seats"));
    assert!(
        update
            .idempotency_key
            .as_deref()
            .is_some_and(|key| key.starts_with("keel-seats-sub_seats-2-"))
    );
    assert!(seat_updates(&fake, "sub_seats") > before);

    // A join through an invitation: 3 again.
    let token = "InviteTokenForTheSeatTest0123456789abcdefgh";
    sqlx::query(
        "INSERT INTO invitations (team_id, email, role, token_hash, expires_at)
         VALUES ($1, 'joiner@example.com', 'member', sha256($2::bytea), now() + interval '1 day')",
    )
    .bind(team)
    .bind(token.as_bytes())
    .execute(&mut db)
    .await
    .unwrap();
    let mut joiner = signed_up(&app, "joiner@example.com").await;
    let csrf = joiner.get("/teams").await.csrf_token();
    let joined = joiner
        .post("/invite", &[("token", token), ("csrf_token", &csrf)])
        .await;
    assert_eq!(joined.status, StatusCode::SEE_OTHER, "{}", joined.body);
    wait_for_seats(&fake, "sub_seats", 3).await;

    // Ten members leave at once: one or two updates, and the count is right.
    let crowd = add_members(&app, team, "crowd", 10).await;
    wait_for_count(
        &app,
        "no seat job left",
        "SELECT count(*) FROM jobs WHERE kind = 'stripe.sync_seats'",
        0,
    )
    .await;
    let before = seat_updates(&fake, "sub_seats");
    let mut leavers = Vec::new();
    for (i, id) in crowd.iter().enumerate() {
        // Each crowd member's session, made directly: the burst is the point, not ten logins.
        let mut visitor = Visitor::new(&app);
        let session = format!("CrowdSessionToken{i:026}");
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, team_id, expires_at) VALUES (sha256($1::bytea), $2, $3, now() + interval '1 day')",
        )
        .bind(session.as_bytes())
        .bind(id)
        .bind(team)
        .execute(&mut db)
        .await
        .unwrap();
        visitor.cookies.insert("keel_session".into(), session);
        let csrf = visitor.get("/team").await.csrf_token();
        leavers.push((visitor, csrf));
    }
    let started = Instant::now();
    let leaving = leavers.iter_mut().map(|(visitor, csrf)| async move {
        visitor
            .post("/team/leave", &[("csrf_token", csrf.as_str())])
            .await
    });
    let answers = join_all(leaving).await;
    assert!(answers.iter().all(|page| page.status == StatusCode::SEE_OTHER));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the burst took {:?}",
        started.elapsed()
    );
    wait_for_seats(&fake, "sub_seats", 3).await;
    wait_for_count(
        &app,
        "the seat jobs done",
        "SELECT count(*) FROM jobs WHERE kind = 'stripe.sync_seats'",
        0,
    )
    .await;
    let calls = seat_updates(&fake, "sub_seats") - before;
    assert!((1..=2).contains(&calls), "{calls} updates for ten departures");
    let requests = fake.requests();
    let last = requests
        .iter()
        .rev()
        .find(|r| r.path == "/v1/subscriptions/sub_seats")
        .unwrap();
    assert_eq!(last.param("items[0][quantity]"), Some("3"));
}

#[tokio::test]
async fn reconcile_sets_a_drifted_seat_count_and_audits_it() {
    let fake = FakeStripe::start().await;
    let app = app_with_prices(&fake, format!("team={TEAM}:per_seat")).await;
    let _owner = signed_up(&app, "drifty@example.com").await;
    let team = team_of(&app, "drifty@example.com").await;
    add_members(&app, team, "drift", 1).await;
    // Stripe bills 7 seats for a team of 2 (someone changed it by hand in the dashboard).
    fake.put_subscription(seat_subscription("sub_drift_seats", team, 7));
    let mut db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, item_id, quantity, state_as_of)
         VALUES ('sub_drift_seats', $1, 'cus_seats', 'active', $2, 'si_sub_drift_seats', 7, now())",
    )
    .bind(team)
    .bind(TEAM)
    .execute(&mut db)
    .await
    .unwrap();

    let mut env = cli_env(&app, &fake);
    env.push(("STRIPE_PRICES", format!("team={TEAM}:per_seat")));
    let (code, output) = run_keel_async(&["stripe", "reconcile"], env.clone()).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("1 seat counts corrected"), "{output}");
    wait_for_seats(&fake, "sub_drift_seats", 2).await;
    let audit: (Value, Value) = sqlx::query_as(
        "SELECT before, after FROM billing_audit_log WHERE action = 'seats' AND subscription_id = 'sub_drift_seats'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(audit, (json!({"quantity": 7}), json!({"quantity": 2})));
    // Right now: a second run corrects nothing.
    let (code, output) = run_keel_async(&["stripe", "reconcile"], env).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("0 seat counts corrected"), "{output}");
}

//! The two ways a team reaches Stripe's hosted pages: Checkout, to subscribe, and the
//! customer portal, to change card or plan, see invoices and cancel.
//!
//! A team has one Stripe customer, created the first time it is needed and kept in
//! `teams.stripe_customer_id`. Its creation carries the idempotency key `keel-customer-<team>`,
//! so two checkouts racing for a new team (two tabs, a double click) get the same customer
//! from Stripe rather than one each.
//!
//! A team has at most one open Checkout Session: each session would become a subscription if
//! paid, and the first one's webhooks may not have arrived when a second checkout starts. The
//! last session opened is kept in `checkout_sessions`; a new checkout asks Stripe about it
//! first and reuses it (same price, still open), expires it (another price), or refuses (paid,
//! its subscription not known here yet). Checkouts of one team take turns on a lock of the
//! team's row, held until the new session is stored.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::{
    CheckoutSessionMode, CheckoutSessionStatus,
    checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
        ExpireCheckoutSession, RetrieveCheckoutSession,
    },
};
use stripe_core::customer::CreateCustomer;
use url::Url;
use uuid::Uuid;

use super::stripe::{Patience, Stripe, StripeError};
use crate::{
    config::{PlanPrice, absolute_url},
    domain::SubscriptionStatus,
};

/// How long a checkout waits for another checkout of the same team (each makes at most four
/// calls to Stripe of ~2 s at most, usually far less) before giving up.
const TURN_TIMEOUT: &str = "10s";

/// Who is paying: the team and the address Stripe's receipts go to.
pub struct Payer<'a> {
    pub team: Uuid,
    pub team_name: &'a str,
    pub email: &'a str,
}

/// Where to send the browser: Stripe's page, if it is a URL at all.
fn hosted_page(url: Option<&str>) -> anyhow::Result<Url> {
    let url = url.context("Stripe returned no page address")?;
    Url::parse(url).with_context(|| format!("Stripe returned a page address that is not a URL: {url:?}"))
}

/// `metadata[team_id]`: lets Stripe's objects and their events name the team.
fn team_metadata(team: Uuid) -> HashMap<String, String> {
    HashMap::from([("team_id".to_owned(), team.to_string())])
}

/// Why a team cannot check out.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutRefused {
    /// Subscribing twice would charge twice: plans are changed in the portal.
    #[error("the team already has a subscription")]
    AlreadySubscribed,
    /// The team's last Checkout Session was paid, and its subscription's events have not
    /// arrived yet: a new checkout would make a second subscription.
    #[error("the team's last checkout was paid; its subscription is on its way")]
    PaymentPending,
    /// Another checkout of the team kept it waiting too long.
    #[error("another checkout of the team is under way")]
    InProgress,
}

/// Creates a Checkout Session for `price` (mode subscription, `client_reference_id` and
/// `metadata[team_id]` = the team), or reuses the team's open one for the same price, and
/// returns the URL to send the browser to.
pub async fn start_checkout(
    db: &PgPool,
    stripe: &Stripe,
    payer: &Payer<'_>,
    price: &PlanPrice,
    base_url: &Url,
) -> anyhow::Result<Result<Url, CheckoutRefused>> {
    let price_id = price.price_id.as_str();
    let mut tx = db.begin().await?;
    let Some(stored_customer) = take_turn(&mut tx, payer.team).await? else {
        return Ok(Err(CheckoutRefused::InProgress));
    };
    let subscribed = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions
                          WHERE team_id = $1 AND status <> ALL($2)) AS "subscribed!""#,
        payer.team,
        SubscriptionStatus::ended_sql(),
    )
    .fetch_one(&mut *tx)
    .await?;
    if subscribed {
        return Ok(Err(CheckoutRefused::AlreadySubscribed));
    }
    match settle_last_session(&mut tx, stripe, payer.team, price_id).await? {
        LastSession::Reusable(url) => return Ok(Ok(url)),
        LastSession::Paid => return Ok(Err(CheckoutRefused::PaymentPending)),
        LastSession::None => {}
    }
    let customer = match stored_customer {
        Some(customer) => customer,
        None => create_customer(&mut tx, stripe, payer).await?,
    };
    // A per-seat plan's quantity is the member count (the team's row is locked: membership
    // changes wait), then kept so by `seats::SyncSeats`.
    let quantity = if price.per_seat {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "members!" FROM memberships WHERE team_id = $1"#,
            payer.team
        )
        .fetch_one(&mut *tx)
        .await?
        .cast_unsigned()
    } else {
        1
    };
    let line_item = CreateCheckoutSessionLineItems {
        price: Some(price_id.to_owned()),
        quantity: Some(quantity),
        ..CreateCheckoutSessionLineItems::new()
    };
    // Lets the subscription's events find the team even before checkout.session.completed.
    let subscription_data = CreateCheckoutSessionSubscriptionData {
        metadata: Some(team_metadata(payer.team)),
        ..CreateCheckoutSessionSubscriptionData::new()
    };
    let request = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer)
        .client_reference_id(payer.team.to_string())
        .line_items(vec![line_item])
        // Stripe fills in {CHECKOUT_SESSION_ID}; /billing thanks the payer while the
        // webhooks catch up.
        .success_url(absolute_url(
            base_url,
            "/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}",
        ))
        .cancel_url(absolute_url(base_url, "/pricing"))
        .subscription_data(subscription_data)
        // checkout.session.completed links the customer only when this names the team of
        // client_reference_id (billing::events): the mark of a session keel opened for it.
        .metadata(team_metadata(payer.team));
    let session = stripe
        .create(
            "checkout.session.create",
            &request,
            &format!("keel-checkout-{}", Uuid::new_v4()),
            Patience::Interactive,
        )
        .await?;
    let url = hosted_page(session.url.as_deref())?;
    sqlx::query!(
        "INSERT INTO checkout_sessions (team_id, session_id, price_id) VALUES ($1, $2, $3)
         ON CONFLICT (team_id) DO UPDATE
         SET session_id = EXCLUDED.session_id, price_id = EXCLUDED.price_id, created_at = now()",
        payer.team,
        session.id.as_str(),
        price_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(url))
}

/// Locks the team's row for this checkout (released with `tx`) and returns its stored
/// customer; `None` when another checkout of the team held the lock past [`TURN_TIMEOUT`].
async fn take_turn(tx: &mut PgConnection, team: Uuid) -> anyhow::Result<Option<Option<String>>> {
    sqlx::query_scalar!("SELECT set_config('lock_timeout', $1, true)", TURN_TIMEOUT)
        .fetch_one(&mut *tx)
        .await?;
    let locked = sqlx::query_scalar!(
        "SELECT stripe_customer_id FROM teams WHERE id = $1 FOR UPDATE",
        team
    )
    .fetch_one(&mut *tx)
    .await;
    match locked {
        Ok(customer) => Ok(Some(customer)),
        // lock_not_available: the lock timeout ran out.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// What became of the team's last Checkout Session.
enum LastSession {
    /// Still open, for the same price: the browser goes back to it.
    Reusable(Url),
    /// Paid, and its subscription not known here yet.
    Paid,
    /// There is none, or it can no longer be paid: a new one may be opened.
    None,
}

/// Asks Stripe about the team's last Checkout Session, expiring it if it is open for another
/// price.
async fn settle_last_session(
    tx: &mut PgConnection,
    stripe: &Stripe,
    team: Uuid,
    price_id: &str,
) -> anyhow::Result<LastSession> {
    let last = sqlx::query!(
        "SELECT session_id, price_id FROM checkout_sessions WHERE team_id = $1",
        team
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(last) = last else {
        return Ok(LastSession::None);
    };
    let retrieve = RetrieveCheckoutSession::new(last.session_id.as_str());
    let session = match stripe
        .read("checkout.session.retrieve", &retrieve, Patience::Interactive)
        .await
    {
        Ok(session) => session,
        // Unknown to this account (STRIPE_SECRET_KEY changed, e.g. from test to live): it can
        // never be paid here.
        Err(StripeError::Api { status: 404, .. }) => return Ok(LastSession::None),
        Err(error) => return Err(error.into()),
    };
    match session.status {
        Some(CheckoutSessionStatus::Open) if last.price_id == price_id => {
            return Ok(LastSession::Reusable(hosted_page(session.url.as_deref())?));
        }
        Some(CheckoutSessionStatus::Open) => {}
        Some(CheckoutSessionStatus::Complete) => return paid(tx, &session).await,
        _ => return Ok(LastSession::None),
    }
    // Another plan chosen: the open session must not be paid as well.
    let expire = ExpireCheckoutSession::new(last.session_id.as_str());
    let key = format!("keel-checkout-expire-{}", last.session_id);
    match stripe
        .create("checkout.session.expire", &expire, &key, Patience::Interactive)
        .await
    {
        Ok(_) => Ok(LastSession::None),
        // Refused: it stopped being open meanwhile (paid a moment ago, or expired).
        Err(error) if !error.is_outage() => {
            let session = stripe
                .read("checkout.session.retrieve", &retrieve, Patience::Interactive)
                .await?;
            match session.status {
                Some(CheckoutSessionStatus::Complete) => paid(tx, &session).await,
                Some(CheckoutSessionStatus::Expired) => Ok(LastSession::None),
                _ => Err(error).with_context(|| format!("expiring checkout session {}", last.session_id)),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// A completed session: paid for a subscription keel has not heard of yet (its webhooks are
/// on their way), or one keel knows, which is then over (a live one refuses checkout earlier).
async fn paid(
    tx: &mut PgConnection,
    session: &stripe_checkout::CheckoutSession,
) -> anyhow::Result<LastSession> {
    let Some(subscription) = &session.subscription else {
        return Ok(LastSession::None);
    };
    let known = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE id = $1) AS "known!""#,
        subscription.id().as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    if known {
        Ok(LastSession::None)
    } else {
        Ok(LastSession::Paid)
    }
}

/// Creates a customer portal session for the team; `None` when the team has no Stripe
/// customer yet (it never checked out: nothing to manage).
pub async fn open_portal(
    db: &PgPool,
    stripe: &Stripe,
    team: Uuid,
    base_url: &Url,
) -> anyhow::Result<Option<Url>> {
    let customer = sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", team)
        .fetch_optional(db)
        .await?
        .flatten();
    let Some(customer) = customer else {
        return Ok(None);
    };
    let request = CreateBillingPortalSession::new()
        .customer(customer)
        .return_url(absolute_url(base_url, "/billing"));
    let session = stripe
        .create(
            "billing_portal.session.create",
            &request,
            &format!("keel-portal-{}", Uuid::new_v4()),
            Patience::Interactive,
        )
        .await?;
    Ok(Some(hosted_page(Some(&session.url))?))
}

/// A new Stripe customer for the team (whose row `tx` holds locked), stored with the session.
/// Should the session not be made, the next checkout within 24 h gets the same customer back
/// (Stripe keeps idempotency keys that long).
async fn create_customer(
    tx: &mut PgConnection,
    stripe: &Stripe,
    payer: &Payer<'_>,
) -> anyhow::Result<String> {
    let request = CreateCustomer::new()
        .email(payer.email)
        .name(payer.team_name)
        .metadata(team_metadata(payer.team));
    let created = stripe
        .create(
            "customer.create",
            &request,
            &format!("keel-customer-{}", payer.team),
            Patience::Interactive,
        )
        .await?;
    sqlx::query!(
        "UPDATE teams SET stripe_customer_id = $2 WHERE id = $1",
        payer.team,
        created.id.as_str(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(created.id.to_string())
}

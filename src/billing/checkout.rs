//! The two ways a team reaches Stripe's hosted pages: Checkout, to subscribe, and the
//! customer portal, to change card or plan, see invoices and cancel.
//!
//! A team has one Stripe customer, created the first time it is needed and kept in
//! `teams.stripe_customer_id`. Its creation carries the idempotency key `keel-customer-<team>`,
//! so two checkouts racing for a new team (two tabs, a double click) get the same customer
//! from Stripe rather than one each.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::PgPool;
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::{
    CheckoutSessionMode,
    checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    },
};
use stripe_core::customer::CreateCustomer;
use url::Url;
use uuid::Uuid;

use super::stripe::{Patience, Stripe};
use crate::{config::absolute_url, domain::SubscriptionStatus};

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
}

/// Creates a Checkout Session for `price_id` (mode subscription, `client_reference_id` = the
/// team) and returns the URL to send the browser to.
pub async fn start_checkout(
    db: &PgPool,
    stripe: &Stripe,
    payer: &Payer<'_>,
    price_id: &str,
    base_url: &Url,
) -> anyhow::Result<Result<Url, CheckoutRefused>> {
    let subscribed = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions
                          WHERE team_id = $1 AND status <> ALL($2)) AS "subscribed!""#,
        payer.team,
        SubscriptionStatus::ended_sql(),
    )
    .fetch_one(db)
    .await?;
    if subscribed {
        return Ok(Err(CheckoutRefused::AlreadySubscribed));
    }
    let customer = customer_of(db, stripe, payer).await?;
    let line_item = CreateCheckoutSessionLineItems {
        price: Some(price_id.to_owned()),
        quantity: Some(1),
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
        .metadata(team_metadata(payer.team));
    let session = stripe
        .create(
            "checkout.session.create",
            &request,
            &format!("keel-checkout-{}", Uuid::new_v4()),
            Patience::Interactive,
        )
        .await?;
    Ok(Ok(hosted_page(session.url.as_deref())?))
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

/// The team's Stripe customer: the stored one, or a new one stored now.
async fn customer_of(db: &PgPool, stripe: &Stripe, payer: &Payer<'_>) -> anyhow::Result<String> {
    let stored = sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", payer.team)
        .fetch_one(db)
        .await?;
    if let Some(customer) = stored {
        return Ok(customer);
    }
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
    // A concurrent request (or a checkout.session.completed) may have stored one first: the
    // stored customer wins and is the one used.
    sqlx::query!(
        "UPDATE teams SET stripe_customer_id = $2 WHERE id = $1 AND stripe_customer_id IS NULL",
        payer.team,
        created.id.as_str(),
    )
    .execute(db)
    .await?;
    sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", payer.team)
        .fetch_one(db)
        .await?
        .context("the team's Stripe customer was cleared while it was being created")
}

//! The two ways a team reaches Stripe's hosted pages: Checkout, to subscribe, and the
//! customer portal, to change card or plan, see invoices and cancel.
//!
//! A team has one Stripe customer, created the first time it is needed and kept in
//! `teams.stripe_customer_id`. Its creation carries the idempotency key `keel-customer-<team>`,
//! so two checkouts racing for a new team (two tabs, a double click) get the same customer
//! from Stripe rather than one each.

use anyhow::Context as _;
use serde::Deserialize;
use sqlx::PgPool;
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

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct HostedPage {
    url: String,
}

impl HostedPage {
    /// Where to send the browser: Stripe's page, if it is a URL at all.
    fn url(self) -> anyhow::Result<Url> {
        Url::parse(&self.url)
            .with_context(|| format!("Stripe returned a page address that is not a URL: {:?}", self.url))
    }
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
    let team = payer.team.to_string();
    let params = vec![
        ("mode", "subscription".to_owned()),
        ("customer", customer),
        ("client_reference_id", team.clone()),
        ("line_items[0][price]", price_id.to_owned()),
        ("line_items[0][quantity]", "1".to_owned()),
        // Stripe fills in {CHECKOUT_SESSION_ID}; /billing thanks the payer while the
        // webhooks catch up.
        (
            "success_url",
            absolute_url(
                base_url,
                "/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}",
            ),
        ),
        ("cancel_url", absolute_url(base_url, "/pricing")),
        // Lets the subscription's events find the team even before checkout.session.completed.
        ("subscription_data[metadata][team_id]", team.clone()),
        ("metadata[team_id]", team),
    ];
    let session: HostedPage = stripe
        .create(
            "checkout.session.create",
            "/v1/checkout/sessions",
            &params,
            &format!("keel-checkout-{}", Uuid::new_v4()),
            Patience::Interactive,
        )
        .await?;
    Ok(Ok(session.url()?))
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
    let params = vec![
        ("customer", customer),
        ("return_url", absolute_url(base_url, "/billing")),
    ];
    let session: HostedPage = stripe
        .create(
            "billing_portal.session.create",
            "/v1/billing_portal/sessions",
            &params,
            &format!("keel-portal-{}", Uuid::new_v4()),
            Patience::Interactive,
        )
        .await?;
    Ok(Some(session.url()?))
}

/// The team's Stripe customer: the stored one, or a new one stored now.
async fn customer_of(db: &PgPool, stripe: &Stripe, payer: &Payer<'_>) -> anyhow::Result<String> {
    let stored = sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", payer.team)
        .fetch_one(db)
        .await?;
    if let Some(customer) = stored {
        return Ok(customer);
    }
    let team = payer.team.to_string();
    let params = vec![
        ("email", payer.email.to_owned()),
        ("name", payer.team_name.to_owned()),
        ("metadata[team_id]", team),
    ];
    let created: Created = stripe
        .create(
            "customer.create",
            "/v1/customers",
            &params,
            &format!("keel-customer-{}", payer.team),
            Patience::Interactive,
        )
        .await?;
    // A concurrent request (or a checkout.session.completed) may have stored one first: the
    // stored customer wins and is the one used.
    sqlx::query!(
        "UPDATE teams SET stripe_customer_id = $2 WHERE id = $1 AND stripe_customer_id IS NULL",
        payer.team,
        created.id,
    )
    .execute(db)
    .await?;
    sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", payer.team)
        .fetch_one(db)
        .await?
        .context("the team's Stripe customer was cleared while it was being created")
}

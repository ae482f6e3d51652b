//! Reconciliation: compare every subscription in Stripe with keel's copy and repair the
//! difference. Webhooks are how keel learns of changes; this is the backstop for the change
//! they never told (an endpoint misconfigured for a day, an event that failed 25 times, a
//! row edited by hand). Run daily by the worker and by `keel stripe reconcile`.
//!
//! Stripe's state is stored as of the moment the page was asked for, through the same guarded
//! write as events: a webhook newer than the listing still wins, an older one arriving later
//! still loses. Each repair is written to `billing_audit_log` (before and after) and counted
//! in `keel_stripe_reconcile_repairs_total{action}`. Dunning columns are left to the invoice
//! events, and subscriptions Stripe does not list are reported, never deleted (a test-mode key
//! against a live database lists nothing). A per-seat subscription whose quantity in Stripe is
//! not its team's member count is corrected in Stripe (`seats::sync`), audited as `seats`.

use std::fmt;

use serde_json::Value;
use sqlx::PgPool;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus};
use time::OffsetDateTime;

use super::{
    events::{SubscriptionFacts, team_of},
    seats,
    stripe::{Patience, Stripe},
};
use crate::jobs::{Job, JobContext};

/// Stripe's largest page.
const PAGE_SIZE: i64 = 100;

/// What a reconciliation found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Subscriptions Stripe listed.
    pub checked: u64,
    /// Listed by Stripe, unknown to keel, now stored.
    pub created: u64,
    /// Known to keel with other facts than Stripe's, now corrected.
    pub updated: u64,
    /// Listed by Stripe, but no team could be found for them (customer not linked, no
    /// `team_id` in the metadata): left alone.
    pub unmatched: u64,
    /// Known to keel, not listed by Stripe.
    pub missing_in_stripe: u64,
    /// Per-seat subscriptions whose quantity in Stripe was not the member count, now set.
    pub seats: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checked {} subscriptions in Stripe: {} repaired ({} created, {} updated), {} without a team, {} known here but not in Stripe, {} seat counts corrected",
            self.checked,
            self.created + self.updated,
            self.created,
            self.updated,
            self.unmatched,
            self.missing_in_stripe,
            self.seats,
        )
    }
}

/// A page of Stripe's list, its subscriptions read leniently (by the reader of webhook
/// events): one subscription keel cannot read is skipped, not the whole reconciliation.
#[derive(miniserde::Deserialize)]
struct Page {
    data: Vec<miniserde::json::Value>,
    has_more: bool,
}

/// miniserde's JSON (async-stripe's) as serde_json's (keel's readers'). Deeper than
/// [`MAX_DEPTH`] (never, from Stripe) becomes null rather than overflow the stack: miniserde
/// reads any depth.
fn to_serde(value: miniserde::json::Value, depth: usize) -> Value {
    use miniserde::json::{Number, Value as Mini};
    const MAX_DEPTH: usize = 64;
    match value {
        _ if depth > MAX_DEPTH => Value::Null,
        Mini::Null => Value::Null,
        Mini::Bool(b) => Value::Bool(b),
        Mini::Number(Number::U64(n)) => Value::from(n),
        Mini::Number(Number::I64(n)) => Value::from(n),
        Mini::Number(Number::F64(n)) => Value::from(n),
        Mini::String(s) => Value::String(s),
        Mini::Array(items) => Value::Array(items.into_iter().map(|v| to_serde(v, depth + 1)).collect()),
        Mini::Object(members) => Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k, to_serde(v, depth + 1)))
                .collect(),
        ),
    }
}

/// Pages through every subscription in Stripe (`status=all`) and repairs every drift.
pub async fn reconcile(db: &PgPool, stripe: &Stripe, per_seat_prices: &[String]) -> anyhow::Result<Summary> {
    reconcile_in(db, stripe, per_seat_prices, None).await
}

/// [`reconcile`] for one Stripe customer's subscriptions (one team's: the console's
/// "Reconcile now").
pub async fn reconcile_customer(
    db: &PgPool,
    stripe: &Stripe,
    per_seat_prices: &[String],
    customer: &str,
) -> anyhow::Result<Summary> {
    reconcile_in(db, stripe, per_seat_prices, Some(customer)).await
}

async fn reconcile_in(
    db: &PgPool,
    stripe: &Stripe,
    per_seat_prices: &[String],
    customer: Option<&str>,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut seen: Vec<String> = Vec::new();
    let mut starting_after: Option<String> = None;
    loop {
        let mut request = ListSubscription::new()
            .status(ListSubscriptionStatus::All)
            .limit(PAGE_SIZE);
        if let Some(last) = &starting_after {
            request = request.starting_after(last.as_str());
        }
        if let Some(customer) = customer {
            request = request.customer(customer);
        }
        let as_of = OffsetDateTime::now_utc();
        let page: Page = stripe
            .read_as("subscription.list", &request, Patience::Background)
            .await?;
        let subscriptions: Vec<Value> = page.data.into_iter().map(|s| to_serde(s, 0)).collect();
        for subscription in &subscriptions {
            let facts = match SubscriptionFacts::read(subscription) {
                Ok(facts) => facts,
                Err(error) => {
                    tracing::warn!(%error, "an unreadable subscription in Stripe's list: skipped");
                    continue;
                }
            };
            summary.checked += 1;
            seen.push(facts.id.to_owned());
            match repair(db, &facts, subscription, as_of).await? {
                Repair::None => {}
                Repair::Created => summary.created += 1,
                Repair::Updated => summary.updated += 1,
                Repair::NoTeam => summary.unmatched += 1,
            }
            if facts
                .price_id
                .is_some_and(|price| per_seat_prices.iter().any(|p| p == price))
                && repair_seats(db, stripe, per_seat_prices, &facts).await?
            {
                summary.seats += 1;
            }
        }
        starting_after = subscriptions
            .last()
            .and_then(|s| s["id"].as_str())
            .map(str::to_owned);
        if !page.has_more || starting_after.is_none() {
            break;
        }
    }
    let missing = sqlx::query_scalar!(
        "SELECT id FROM subscriptions WHERE id <> ALL($1) AND ($2::text IS NULL OR customer_id = $2)",
        &seen,
        customer,
    )
    .fetch_all(db)
    .await?;
    if !missing.is_empty() {
        tracing::warn!(subscriptions = ?missing, "keel holds subscriptions Stripe does not list (another Stripe account or mode?)");
    }
    summary.missing_in_stripe = missing.len() as u64;
    Ok(summary)
}

enum Repair {
    None,
    Created,
    Updated,
    NoTeam,
}

/// One subscription: compared under a row lock, corrected and audited in one transaction.
async fn repair(
    db: &PgPool,
    facts: &SubscriptionFacts<'_>,
    object: &Value,
    as_of: OffsetDateTime,
) -> anyhow::Result<Repair> {
    let mut tx = db.begin().await?;
    let local = sqlx::query!(
        "SELECT team_id, customer_id, status, price_id, item_id, quantity, current_period_end,
                cancel_at_period_end, trial_end
         FROM subscriptions WHERE id = $1 FOR UPDATE",
        facts.id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let before = local.as_ref().map(|row| {
        SubscriptionFacts {
            id: facts.id,
            customer: &row.customer_id,
            status: &row.status,
            price_id: row.price_id.as_deref(),
            item_id: row.item_id.as_deref(),
            quantity: row.quantity.map(i64::from),
            current_period_end: row.current_period_end,
            cancel_at_period_end: row.cancel_at_period_end,
            trial_end: row.trial_end,
        }
        .to_json()
    });
    let after = facts.to_json();
    if before.as_ref() == Some(&after) {
        return Ok(Repair::None);
    }
    let team = match &local {
        Some(row) => row.team_id,
        None => match team_of(&mut tx, facts.id, facts.customer, object).await {
            Ok(team) => team,
            Err(error) => {
                tracing::warn!(subscription = facts.id, error = %error, "a subscription in Stripe with no team here: left alone");
                return Ok(Repair::NoTeam);
            }
        },
    };
    if !facts.store(&mut tx, team, as_of).await? {
        // A webhook newer than the listing got there first.
        return Ok(Repair::None);
    }
    let action = if before.is_some() { "updated" } else { "created" };
    sqlx::query!(
        "INSERT INTO billing_audit_log (source, action, subscription_id, team_id, before, after)
         VALUES ('reconcile', $1, $2, $3, $4, $5)",
        action,
        facts.id,
        team,
        before,
        after,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("keel_stripe_reconcile_repairs_total", "action" => action).increment(1);
    tracing::warn!(subscription = facts.id, %team, action, ?before, %after, "reconciliation repaired a subscription");
    Ok(if before.is_some() {
        Repair::Updated
    } else {
        Repair::Created
    })
}

/// Sets a per-seat subscription's quantity in Stripe to its team's member count if it is not;
/// whether it did.
async fn repair_seats(
    db: &PgPool,
    stripe: &Stripe,
    per_seat_prices: &[String],
    facts: &SubscriptionFacts<'_>,
) -> anyhow::Result<bool> {
    let team = sqlx::query_scalar!("SELECT team_id FROM subscriptions WHERE id = $1", facts.id)
        .fetch_optional(db)
        .await?;
    let Some(team) = team else { return Ok(false) };
    // One key a day: a rerun the same day replays its call.
    let tag = format!("reconcile{}", OffsetDateTime::now_utc().date());
    let in_stripe = Some(facts.quantity.unwrap_or(1));
    let Some(change) = seats::sync(db, stripe, per_seat_prices, team, in_stripe, &tag).await? else {
        return Ok(false);
    };
    sqlx::query!(
        "INSERT INTO billing_audit_log (source, action, subscription_id, team_id, before, after)
         VALUES ('reconcile', 'seats', $1, $2, $3, $4)",
        change.subscription,
        team,
        serde_json::json!({ "quantity": change.before }),
        serde_json::json!({ "quantity": change.after }),
    )
    .execute(db)
    .await?;
    metrics::counter!("keel_stripe_reconcile_repairs_total", "action" => "seats").increment(1);
    tracing::warn!(subscription = %change.subscription, %team, before = ?change.before, after = change.after,
        "reconciliation corrected a per-seat subscription's quantity");
    Ok(true)
}

/// The daily reconciliation (see `jobs::schedule`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReconcileSubscriptions;

impl Job for ReconcileSubscriptions {
    const KIND: &'static str = crate::jobs::JobKind::ReconcileSubscriptions.as_str();
    const MAX_ATTEMPTS: i32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let Some(stripe) = &context.stripe else {
            tracing::info!("STRIPE_SECRET_KEY is not set: nothing to reconcile");
            return Ok(());
        };
        let summary = reconcile(&context.db, stripe, &context.per_seat_prices).await?;
        tracing::info!(%summary, "reconciled subscriptions with Stripe");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_pages_are_read_as_keel_reads_events() {
        let raw = r#"{"object":"list","has_more":true,"data":[{"id":"sub_1","status":"active",
                      "quantity":2,"balance":-5,"ratio":0.5,"items":{"data":[{"price":{"id":"price_1"}}]},
                      "ended_at":null,"cancel_at_period_end":false}]}"#;
        let page: Page = miniserde::json::from_str(raw).unwrap();
        assert!(page.has_more);
        let read: Vec<Value> = page.data.into_iter().map(|s| to_serde(s, 0)).collect();
        let expected = serde_json::json!({"id": "sub_1", "status": "active", "quantity": 2, "balance": -5,
            "ratio": 0.5, "items": {"data": [{"price": {"id": "price_1"}}]}, "ended_at": null,
            "cancel_at_period_end": false});
        assert_eq!(read, [expected]);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep: miniserde::json::Value = miniserde::json::from_str(&deep).unwrap();
        assert!(to_serde(deep, 0).is_array(), "read without overflowing the stack");
    }
}

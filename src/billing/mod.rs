//! Stripe billing lives here. Stripe is the source of truth for subscriptions; keel learns about
//! changes from signed webhook deliveries (`signature`, `webhooks`, `events`), sends people to
//! Stripe's hosted pages to pay (`checkout`), shows prices (`pricing`), and checks its copy
//! against Stripe daily (`reconcile`). `entitlement` decides, per request, who may use paid
//! features. Every call to Stripe goes through `stripe`.

pub mod checkout;
pub mod entitlement;
pub mod events;
pub mod pricing;
pub mod reconcile;
pub mod seats;
pub mod signature;
pub mod stripe;
pub mod webhooks;

use std::time::Duration;

use sqlx::PgPool;

use crate::domain::SubscriptionStatus;

/// Subscription statuses the dunning gauge reports (each always present, 0 when none).
const DUNNING_STATUSES: [SubscriptionStatus; 5] = [
    SubscriptionStatus::Active,
    SubscriptionStatus::Trialing,
    SubscriptionStatus::PastDue,
    SubscriptionStatus::Unpaid,
    SubscriptionStatus::Canceled,
];

/// Sets `keel_dunning_teams{status}`: subscriptions with a failed payment not yet made good,
/// by Stripe status. Read at every `/metrics` scrape; a slow or absent database leaves the
/// last values in place rather than holding the scrape.
pub async fn record_dunning_gauge(db: &PgPool) {
    let counted = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query!(
            r#"SELECT status, count(*) AS "teams!" FROM subscriptions
               WHERE payment_failed_at IS NOT NULL GROUP BY status"#
        )
        .fetch_all(db),
    )
    .await;
    let Ok(Ok(rows)) = counted else {
        tracing::warn!("counting teams in dunning failed or timed out");
        return;
    };
    for status in DUNNING_STATUSES {
        let teams = rows
            .iter()
            .find(|row| row.status == status.as_str())
            .map_or(0, |row| row.teams);
        #[allow(clippy::cast_precision_loss)] // a count of teams
        metrics::gauge!("keel_dunning_teams", "status" => status.as_str()).set(teams as f64);
    }
}

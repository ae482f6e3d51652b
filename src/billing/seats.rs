//! Per-seat plans (SPEC, "Teams (B2B)"): a team on a `:per_seat` price of `STRIPE_PRICES`
//! pays for each member. Checkout sets the quantity to the member count; every change of
//! membership queues [`SyncSeats`], which sets the Stripe subscription's quantity to the
//! member count as it is when the job runs; the daily reconciliation repairs what is left.
//!
//! - **Bursts coalesce.** The job is keyed by team and [`WINDOW`], and runs at the window's
//!   end: ten joins in a second make one job (two across a window's edge), one call.
//! - **Never stale.** Jobs of one team take turns on an advisory lock held across the Stripe
//!   call, and each counts the members after taking it: the last call carries the last count.
//! - **Idempotent.** The call's key names the subscription, the quantity and the job: a retry
//!   of the job replays its call, while a later job is a new request (one key per quantity
//!   alone would replay the first answer of 3 → 4 → 3 and leave 4).
//! - **Retried** with the jobs' backoff; `keel jobs list` shows a job that keeps failing.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use stripe_billing::subscription::{UpdateSubscription, UpdateSubscriptionItems};
use time::OffsetDateTime;
use uuid::Uuid;

use super::stripe::{Patience, Stripe};
use crate::{
    domain::SubscriptionStatus,
    jobs::{self, EnqueueOptions, Job, JobContext},
};

/// The jobs of one team queued within this window are one job.
const WINDOW: Duration = Duration::from_secs(2);

/// Sets the quantity of the team's per-seat subscription to its member count.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncSeats {
    pub team_id: Uuid,
}

/// Queues [`SyncSeats`] for `team_id` (on `conn`, in the transaction that changed its members),
/// unless one is already queued for this window.
pub async fn queue(conn: &mut PgConnection, team_id: Uuid) -> anyhow::Result<()> {
    let window = WINDOW.as_secs().cast_signed();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let start = now - now.rem_euclid(window);
    let options = EnqueueOptions {
        key: Some(format!("{}:{team_id}:{start}", SyncSeats::KIND)),
        run_at: Some(OffsetDateTime::from_unix_timestamp(start + window)?),
    };
    jobs::enqueue_with(conn, &SyncSeats { team_id }, options).await?;
    Ok(())
}

/// The seats of a team on a per-seat plan, for `/billing`.
pub struct Seats {
    /// Billed for, as keel last learned it from Stripe.
    pub billed: Option<i32>,
    pub members: i64,
}

impl Seats {
    /// What Stripe bills for, while it is not the member count yet.
    pub fn updating(&self) -> Option<i32> {
        self.billed.filter(|billed| i64::from(*billed) != self.members)
    }
}

/// The seats of `team_id`'s subscription to `price_id`.
pub async fn of_team(db: &PgPool, team_id: Uuid, price_id: &str) -> anyhow::Result<Seats> {
    let row = sqlx::query!(
        r#"SELECT (SELECT quantity FROM subscriptions WHERE team_id = $1 AND price_id = $2
                   ORDER BY state_as_of DESC LIMIT 1) AS billed,
                  (SELECT count(*) FROM memberships WHERE team_id = $1) AS "members!""#,
        team_id,
        price_id,
    )
    .fetch_one(db)
    .await?;
    Ok(Seats {
        billed: row.billed,
        members: row.members,
    })
}

/// A change of a subscription's seats.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub subscription: String,
    pub before: Option<i64>,
    pub after: i64,
}

/// What Stripe answers to the update (the rest of the subscription is left to the webhooks).
#[derive(miniserde::Deserialize)]
struct Updated {
    id: String,
}

/// Sets the quantity of `team_id`'s live subscription on one of `per_seat_prices` to the
/// team's member count, under the team's seat lock. `in_stripe` is Stripe's quantity when the
/// caller has just read it: then nothing is sent if it is right. `tag` makes the call's
/// idempotency key (the job's id, the reconciliation's day). `None`: nothing to do.
pub async fn sync(
    db: &PgPool,
    stripe: &Stripe,
    per_seat_prices: &[String],
    team_id: Uuid,
    in_stripe: Option<i64>,
    tag: &str,
) -> anyhow::Result<Option<Change>> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(team_id.to_string())
        .execute(&mut *tx)
        .await
        .context("locking the team's seats")?;
    let subscription = sqlx::query!(
        "SELECT id, item_id, quantity FROM subscriptions
         WHERE team_id = $1 AND price_id = ANY($2) AND status <> ALL($3)
         ORDER BY state_as_of DESC LIMIT 1",
        team_id,
        per_seat_prices,
        SubscriptionStatus::ended_sql(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(subscription) = subscription else {
        return Ok(None);
    };
    let members = sqlx::query_scalar!(
        r#"SELECT count(*) AS "members!" FROM memberships WHERE team_id = $1"#,
        team_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if in_stripe == Some(members) {
        return Ok(None);
    }
    let item = subscription.item_id.with_context(|| {
        format!(
            "subscription {} has no item known yet (its webhook has not arrived)",
            subscription.id
        )
    })?;
    let request = UpdateSubscription::new(subscription.id.as_str()).items(vec![UpdateSubscriptionItems {
        id: Some(item),
        quantity: Some(members.cast_unsigned()),
        ..UpdateSubscriptionItems::new()
    }]);
    let key = format!("keel-seats-{}-{members}-{tag}", subscription.id);
    let updated: Updated = stripe
        .write_as("subscription.update_seats", &request, &key, Patience::Background)
        .await?;
    sqlx::query!(
        "UPDATE subscriptions SET quantity = $2, updated_at = now() WHERE id = $1",
        updated.id,
        i32::try_from(members)?,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let before = in_stripe.or(subscription.quantity.map(i64::from));
    tracing::info!(%team_id, subscription = %updated.id, ?before, after = members, "seats updated in Stripe");
    Ok(Some(Change {
        subscription: updated.id,
        before,
        after: members,
    }))
}

/// The first key of the two-key advisory lock (see `mail::cap` for the other class).
const LOCK_CLASS: i32 = 0x7365_6174; // "seat"

impl Job for SyncSeats {
    const KIND: &'static str = crate::jobs::JobKind::SyncSeats.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let Some(stripe) = &context.stripe else {
            return Ok(());
        };
        let tag = format!("job{}", context.job_id);
        sync(
            &context.db,
            stripe,
            &context.per_seat_prices,
            self.team_id,
            None,
            &tag,
        )
        .await?;
        Ok(())
    }
}

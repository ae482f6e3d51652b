//! Processing stored Stripe events: subscription state and dunning.
//!
//! One job per event (`ProcessStripeEvent`), run at least once, so every step is idempotent:
//! - the event row is locked and marked processed in the same transaction as its effects, so
//!   a second run (a redelivered job, `keel stripe replay`) finds it done;
//! - subscription state is applied only from an event at least as new as the state it
//!   replaces (`state_as_of`, Stripe's `created`): an older event arriving late changes nothing;
//! - every email has an idempotency key (`dunning:<invoice>:<attempt>`, …), so none is sent
//!   twice even if two events lead to it.
//!
//! Objects are read leniently from the JSON (only the fields used), in both API shapes: the
//! invoice's subscription is `invoice.subscription` before 2025-03-31 and
//! `invoice.parent.subscription_details.subscription` after; a subscription's period end is
//! top-level before and on its items after.
//!
//! An event that needs state keel has not learned yet (a subscription whose customer no
//! checkout has linked to a team, an invoice of an unknown subscription) fails its attempt and
//! is retried with backoff: the event it waits for is usually a few seconds behind.
//!
//! Some events are marked processed without effect, with a warning: one whose `livemode`
//! differs from the mode of `STRIPE_SECRET_KEY` (a test event reaching a live deployment, or
//! the reverse; without a key nothing is filtered, as there is no mode to compare with), and a
//! checkout that keel did not open for the team it names (see [`link_customer`]).

use anyhow::{Context as _, bail};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{seats, stripe::KeyMode, webhooks::ProcessStripeEvent};
use crate::{
    accounts::audit::{self, Action, Event},
    domain::{Role, SubscriptionStatus},
    jobs::{Job, JobContext, Permanent},
    mail::{
        self, AccessPaused, Mailer, PaymentActionRequired, PaymentFailed, PaymentRecovered,
        PaymentRetriesExhausted, TrialEnding,
    },
};

impl Job for ProcessStripeEvent {
    const KIND: &'static str = crate::jobs::JobKind::ProcessStripeEvent.as_str();
    /// Stripe itself retries a delivery for three days; waiting for a missing event as long.
    const MAX_ATTEMPTS: i32 = 25;

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let mode = context.stripe.as_ref().and_then(super::stripe::Stripe::mode);
        process(&context.db, &context.mailer, mode, &self.event_id).await
    }
}

/// What processing did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Processed {
    Applied,
    AlreadyProcessed,
    /// A type keel does not act on (stored and acknowledged all the same).
    Ignored,
    /// Marked processed without effect, for the reason given (also logged as a warning).
    Skipped(&'static str),
}

impl std::fmt::Display for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Processed::Applied => "processed",
            Processed::AlreadyProcessed => "already processed",
            Processed::Ignored => "processed (a type keel does not act on)",
            Processed::Skipped(why) => return write!(f, "processed without effect: {why}"),
        })
    }
}

/// `keel stripe replay`: processes a stored event again, now. Safe at any time: state only
/// moves forward (`state_as_of`) and every email has its idempotency key. `mode` is that of
/// `STRIPE_SECRET_KEY`, as for [`process`].
pub async fn replay(
    db: &PgPool,
    mailer: &Mailer,
    mode: Option<KeyMode>,
    event_id: &str,
) -> anyhow::Result<Processed> {
    process_event(db, mailer, mode, event_id, Again::Yes).await
}

/// Whether an event already processed is processed again (replay).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Again {
    Yes,
    No,
}

/// Processes the stored event `event_id` once. `mode` is that of `STRIPE_SECRET_KEY`: an event
/// of the other mode is not applied (`None`, no key: every event is).
pub async fn process(
    db: &PgPool,
    mailer: &Mailer,
    mode: Option<KeyMode>,
    event_id: &str,
) -> anyhow::Result<()> {
    let processed = process_event(db, mailer, mode, event_id, Again::No).await?;
    tracing::info!(event = event_id, ?processed, "stripe event processed");
    Ok(())
}

/// One transaction: a failure (an event still waiting for another) leaves the event as it
/// was, for the next attempt.
async fn process_event(
    db: &PgPool,
    mailer: &Mailer,
    mode: Option<KeyMode>,
    event_id: &str,
    again: Again,
) -> anyhow::Result<Processed> {
    let mut tx = db.begin().await?;
    let event = sqlx::query!(
        r#"SELECT type AS kind, created, livemode, payload, processed_at FROM stripe_events WHERE id = $1 FOR UPDATE"#,
        event_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .with_context(|| format!("no stored event {event_id} (see the stripe_events table)"))?;
    if event.processed_at.is_some() && again == Again::No {
        return Ok(Processed::AlreadyProcessed);
    }
    if let Some(mode) = mode
        && event.livemode != mode.livemode()
    {
        tracing::warn!(
            event = event_id,
            kind = event.kind,
            livemode = event.livemode,
            "a Stripe event of the other mode than STRIPE_SECRET_KEY's: stored, not applied"
        );
        mark_processed(&mut tx, event_id).await?;
        tx.commit().await?;
        return Ok(Processed::Skipped("its livemode is not STRIPE_SECRET_KEY's"));
    }
    // It was signed by Stripe and stored as sent, so it is JSON; what serde_json cannot read
    // (nesting past its recursion limit) it will never read.
    let payload: Value = serde_json::from_str(&event.payload)
        .map_err(|error| Permanent(format!("the stored event {event_id} cannot be read: {error}")))?;
    let object = &payload["data"]["object"];
    let at = event.created;
    let outcome = match event.kind.as_str() {
        "checkout.session.completed" => link_customer(&mut tx, object).await?,
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => apply_subscription(&mut tx, object, at).await?,
        "customer.subscription.trial_will_end" => trial_will_end(&mut tx, mailer, object).await?,
        "invoice.payment_failed" => payment_failed(&mut tx, mailer, object, at).await?,
        "invoice.paid" | "invoice.payment_succeeded" => {
            payment_succeeded(&mut tx, mailer, object, at).await?
        }
        "invoice.payment_action_required" => action_required(&mut tx, mailer, object).await?,
        "customer.deleted" => {
            let customer = object.get("id").and_then(Value::as_str).unwrap_or_default();
            sqlx::query!(
                "UPDATE teams SET stripe_customer_id = NULL WHERE stripe_customer_id = $1",
                customer
            )
            .execute(&mut *tx)
            .await?;
            Processed::Applied
        }
        // customer.updated carries nothing keel keeps; anything else is not ours to act on.
        _ => Processed::Ignored,
    };
    mark_processed(&mut tx, event_id).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn mark_processed(tx: &mut PgConnection, event_id: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE stripe_events SET processed_at = now() WHERE id = $1",
        event_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A string field, or the `id` of an expanded object in its place.
fn id_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    let value = object.pointer(pointer)?;
    value.as_str().or_else(|| value.get("id")?.as_str())
}

fn time_at(object: &Value, pointer: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(object.pointer(pointer)?.as_i64()?).ok()
}

/// The subscription an invoice belongs to, in either API shape.
fn invoice_subscription(invoice: &Value) -> Option<&str> {
    id_at(invoice, "/subscription").or_else(|| id_at(invoice, "/parent/subscription_details/subscription"))
}

/// checkout.session.completed: `client_reference_id` is the team that checked out; its
/// customer is remembered, so the subscription events that follow find the team.
///
/// Only a session keel opened for that team links anything: mode `subscription`, and
/// `metadata.team_id` (set by `checkout::start_checkout`) equal to `client_reference_id`. Any
/// other session of the account (a payment link, another integration, a hand-made session
/// naming a team) could otherwise attach its customer, and the subscriptions that customer
/// pays for, to a stranger's team. A team's customer is never replaced by another. A refusal
/// is logged and the event marked processed: retrying would never change the answer.
async fn link_customer(tx: &mut PgConnection, session: &Value) -> anyhow::Result<Processed> {
    let session_id = id_at(session, "/id").unwrap_or_default();
    let team_at = |pointer| {
        session
            .pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|team| Uuid::parse_str(team).ok())
    };
    let team = team_at("/client_reference_id");
    let (Some(team), Some(customer)) = (team, id_at(session, "/customer")) else {
        tracing::warn!(
            session_id,
            "checkout session without a team reference or a customer: not linked"
        );
        return Ok(Processed::Skipped("no team reference or no customer"));
    };
    let mode = session.get("mode").and_then(Value::as_str).unwrap_or_default();
    if mode != "subscription" {
        tracing::warn!(session_id, %team, mode, "checkout session not in subscription mode: not linked");
        return Ok(Processed::Skipped("not a subscription-mode session"));
    }
    if team_at("/metadata/team_id") != Some(team) {
        tracing::warn!(
            session_id,
            %team,
            "checkout session whose metadata.team_id is not its client_reference_id (not opened by keel for that team): not linked"
        );
        return Ok(Processed::Skipped(
            "metadata.team_id does not match client_reference_id",
        ));
    }
    let linked = sqlx::query!(
        "UPDATE teams SET stripe_customer_id = $2
         WHERE id = $1 AND (stripe_customer_id IS NULL OR stripe_customer_id = $2)
           AND NOT EXISTS (SELECT 1 FROM teams other WHERE other.stripe_customer_id = $2 AND other.id <> $1)",
        team,
        customer,
    )
    .execute(&mut *tx)
    .await?;
    if linked.rows_affected() == 0 {
        tracing::warn!(%team, customer, "checkout for a team that is gone or has another customer: not linked");
        return Ok(Processed::Skipped(
            "the team is gone, or it or the customer is linked to another",
        ));
    }
    Ok(Processed::Applied)
}

/// The team of subscription `id`: the one keel stored it under, else its customer's (linked
/// at checkout), else the `team_id` in its metadata; an error, to be retried, while none is
/// known.
pub(super) async fn team_of(
    tx: &mut PgConnection,
    id: &str,
    customer: &str,
    object: &Value,
) -> anyhow::Result<Uuid> {
    // A subscription keel already holds keeps its team, even once its customer is deleted
    // (customer.deleted and the subscription's own deletion arrive in either order).
    let known = sqlx::query_scalar!("SELECT team_id FROM subscriptions WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(team) = known {
        return Ok(team);
    }
    let linked = sqlx::query_scalar!("SELECT id FROM teams WHERE stripe_customer_id = $1", customer)
        .fetch_optional(&mut *tx)
        .await?;
    let from_metadata = || {
        object
            .pointer("/metadata/team_id")
            .and_then(Value::as_str)
            .and_then(|team| Uuid::parse_str(team).ok())
    };
    linked.or_else(from_metadata).with_context(|| {
        format!("customer {customer} of {id} is not linked to a team yet (waiting for its checkout)")
    })
}

/// customer.subscription.created / updated / deleted: the subscription as the event saw it,
/// unless keel already holds a newer state.
async fn apply_subscription(
    tx: &mut PgConnection,
    subscription: &Value,
    at: OffsetDateTime,
) -> anyhow::Result<Processed> {
    let facts = SubscriptionFacts::read(subscription)?;
    if SubscriptionStatus::parse(facts.status) == SubscriptionStatus::Unknown {
        tracing::warn!(
            status = facts.status,
            "a subscription status keel does not know: stored, never entitled"
        );
    }
    let team = team_of(tx, facts.id, facts.customer, subscription).await?;
    facts.store(tx, team, at).await?;
    Ok(Processed::Applied)
}

/// What keel keeps of a Stripe subscription object (an event's, or one listed by
/// reconciliation), read from either API shape.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SubscriptionFacts<'a> {
    pub id: &'a str,
    pub customer: &'a str,
    /// As Stripe sent it, and stored so: a status newer than keel is kept, and read as
    /// [`SubscriptionStatus::Unknown`].
    pub status: &'a str,
    pub price_id: Option<&'a str>,
    /// The item of that price (a per-seat plan's seats are its quantity).
    pub item_id: Option<&'a str>,
    pub quantity: Option<i64>,
    pub current_period_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<OffsetDateTime>,
}

impl<'a> SubscriptionFacts<'a> {
    pub fn read(subscription: &'a Value) -> anyhow::Result<Self> {
        Ok(Self {
            id: id_at(subscription, "/id").context("a subscription without an id")?,
            customer: id_at(subscription, "/customer").context("a subscription without a customer")?,
            status: subscription
                .get("status")
                .and_then(Value::as_str)
                .context("a subscription without a status")?,
            price_id: id_at(subscription, "/items/data/0/price/id"),
            item_id: id_at(subscription, "/items/data/0/id"),
            quantity: subscription
                .pointer("/items/data/0/quantity")
                .or_else(|| subscription.get("quantity"))
                .and_then(Value::as_i64),
            current_period_end: time_at(subscription, "/current_period_end")
                .or_else(|| time_at(subscription, "/items/data/0/current_period_end")),
            cancel_at_period_end: subscription
                .get("cancel_at_period_end")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            trial_end: time_at(subscription, "/trial_end"),
        })
    }

    /// The facts as JSON, for the audit log.
    pub fn to_json(&self) -> Value {
        let unix = |at: Option<OffsetDateTime>| at.map(OffsetDateTime::unix_timestamp);
        serde_json::json!({
            "id": self.id,
            "customer": self.customer,
            "status": self.status,
            "price_id": self.price_id,
            "quantity": self.quantity,
            "current_period_end": unix(self.current_period_end),
            "cancel_at_period_end": self.cancel_at_period_end,
            "trial_end": unix(self.trial_end),
        })
    }

    /// Stores these facts for `team` as of `at`, unless keel holds a newer state; whether it
    /// stored them.
    /// A change of status goes into the team's audit log.
    pub async fn store(&self, tx: &mut PgConnection, team: Uuid, at: OffsetDateTime) -> anyhow::Result<bool> {
        let before = sqlx::query_scalar!(
            "SELECT status FROM subscriptions WHERE id = $1 FOR UPDATE",
            self.id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let (statuses, stages) = SubscriptionStatus::stages_sql();
        let stored = sqlx::query!(
            "INSERT INTO subscriptions (id, team_id, customer_id, status, price_id, current_period_end,
                                        cancel_at_period_end, trial_end, state_as_of, item_id, quantity)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $14, $15)
             ON CONFLICT (id) DO UPDATE SET
                 team_id = EXCLUDED.team_id, customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
                 price_id = EXCLUDED.price_id, item_id = EXCLUDED.item_id, quantity = EXCLUDED.quantity,
                 current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end, trial_end = EXCLUDED.trial_end,
                 state_as_of = EXCLUDED.state_as_of, updated_at = now()
             -- Dunning (payment_failed_at) is left to the invoice events: only the failed
             -- invoice's payment ends it, with its recovery email.
             WHERE subscriptions.state_as_of < EXCLUDED.state_as_of
                -- Two events in one second (Stripe's `created` has no finer grain): the later
                -- stage of a subscription's life wins, whatever the processing order ($10: this
                -- status's stage; $11, $12: every status and its stage, `SubscriptionStatus::stage`).
                OR (subscriptions.state_as_of = EXCLUDED.state_as_of
                    AND $10 >= coalesce((SELECT known.stage FROM unnest($11::text[], $12::int4[]) AS known(status, stage)
                                         WHERE known.status = subscriptions.status), $13))",
            self.id,
            team,
            self.customer,
            self.status,
            self.price_id,
            self.current_period_end,
            self.cancel_at_period_end,
            self.trial_end,
            at,
            SubscriptionStatus::parse(self.status).stage(),
            statuses,
            stages,
            SubscriptionStatus::Unknown.stage(),
            self.item_id,
            self.quantity.and_then(|quantity| i32::try_from(quantity).ok()),
        )
        .execute(&mut *tx)
        .await?;
        let stored = stored.rows_affected() > 0;
        if stored && before.is_none() {
            // A new subscription: if its plan is per seat, its quantity follows the members.
            seats::queue(tx, team).await?;
        }
        if stored && before.as_deref() != Some(self.status) {
            let detail = match &before {
                Some(old) => format!("{old} → {}", self.status),
                None => self.status.to_owned(),
            };
            let event = Event::new(Action::SubscriptionStatusChanged)
                .on(self.id)
                .detail(&detail);
            audit::record(tx, team, None, event).await?;
        }
        Ok(stored)
    }
}

/// An invoice of a subscription keel knows: its ids and the address of the team's owner.
struct SubscriptionInvoice<'a> {
    subscription: &'a str,
    invoice_id: &'a str,
    owner: String,
}

/// `None` for an invoice of no subscription (a one-off invoice); an error, to be retried,
/// while its subscription is not known yet. Locks the subscription row for the update.
async fn subscription_invoice<'a>(
    tx: &mut PgConnection,
    invoice: &'a Value,
) -> anyhow::Result<Option<SubscriptionInvoice<'a>>> {
    let Some(subscription) = invoice_subscription(invoice) else {
        return Ok(None);
    };
    let invoice_id = id_at(invoice, "/id").context("an invoice without an id")?;
    let row = sqlx::query!(
        r#"SELECT u.email AS "email?"
           FROM subscriptions s
           LEFT JOIN memberships m ON m.team_id = s.team_id AND m.role = $2
           LEFT JOIN users u ON u.id = m.user_id
           WHERE s.id = $1
           ORDER BY m.created_at
           LIMIT 1
           FOR UPDATE OF s"#,
        subscription,
        Role::Owner.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        bail!("subscription {subscription} is not known yet (waiting for its subscription event)");
    };
    let owner = row
        .email
        .with_context(|| format!("the team of {subscription} has no owner to email"))?;
    Ok(Some(SubscriptionInvoice {
        subscription,
        invoice_id,
        owner,
    }))
}

/// invoice.payment_failed: the team enters dunning (if not in it already) and the owner gets
/// one email for this attempt; the last attempt (no `next_payment_attempt`) is a final notice.
async fn payment_failed(
    tx: &mut PgConnection,
    mailer: &Mailer,
    invoice: &Value,
    at: OffsetDateTime,
) -> anyhow::Result<Processed> {
    let Some(SubscriptionInvoice {
        subscription,
        invoice_id,
        owner,
    }) = subscription_invoice(tx, invoice).await?
    else {
        return Ok(Processed::Ignored);
    };
    // A failure older than the last successful payment is a late delivery: already made good.
    let applied = sqlx::query!(
        "UPDATE subscriptions
         SET payment_failed_at = coalesce(payment_failed_at, $2),
             failed_invoice_id = coalesce(failed_invoice_id, $3),
             updated_at = now()
         WHERE id = $1 AND (payment_succeeded_at IS NULL OR payment_succeeded_at < $2)",
        subscription,
        at,
        invoice_id,
    )
    .execute(&mut *tx)
    .await?;
    if applied.rows_affected() == 0 {
        tracing::info!(
            invoice = invoice_id,
            "a failure older than the last payment: ignored"
        );
        return Ok(Processed::Applied);
    }
    let attempt = invoice.get("attempt_count").and_then(Value::as_i64).unwrap_or(1);
    let key = format!("dunning:{invoice_id}:{attempt}");
    let billing_link = mailer.link("/billing");
    if invoice.get("next_payment_attempt").is_none_or(Value::is_null) {
        mail::enqueue(
            tx,
            mailer,
            &owner,
            &key,
            &PaymentRetriesExhausted { billing_link },
        )
        .await?;
    } else {
        mail::enqueue(
            tx,
            mailer,
            &owner,
            &key,
            &PaymentFailed {
                billing_link,
                attempt,
            },
        )
        .await?;
    }
    Ok(Processed::Applied)
}

/// invoice.paid / invoice.payment_succeeded (both arrive for one payment): a payment after
/// the failure ends dunning and the owner is told once.
async fn payment_succeeded(
    tx: &mut PgConnection,
    mailer: &Mailer,
    invoice: &Value,
    at: OffsetDateTime,
) -> anyhow::Result<Processed> {
    let Some(SubscriptionInvoice {
        subscription,
        invoice_id,
        owner,
    }) = subscription_invoice(tx, invoice).await?
    else {
        return Ok(Processed::Ignored);
    };
    // Dunning ends when the invoice that failed is paid (another paid invoice, e.g. a
    // proration, leaves it open).
    let recovered = sqlx::query_scalar!(
        r#"UPDATE subscriptions s
           SET payment_succeeded_at = greatest(s.payment_succeeded_at, $2),
               payment_failed_at = CASE WHEN s.failed_invoice_id = $3 THEN NULL ELSE s.payment_failed_at END,
               failed_invoice_id = CASE WHEN s.failed_invoice_id = $3 THEN NULL ELSE s.failed_invoice_id END,
               updated_at = now()
           FROM subscriptions old
           WHERE s.id = $1 AND old.id = s.id
           RETURNING old.failed_invoice_id IS NOT DISTINCT FROM $3 AS "recovered!""#,
        subscription,
        at,
        invoice_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    if recovered {
        let key = format!("recovered:{invoice_id}");
        let email = PaymentRecovered {
            billing_link: mailer.link("/billing"),
        };
        mail::enqueue(tx, mailer, &owner, &key, &email).await?;
    }
    Ok(Processed::Applied)
}

/// invoice.payment_action_required (3-D Secure): the owner gets the hosted invoice page,
/// where the bank's check is completed.
async fn action_required(
    tx: &mut PgConnection,
    mailer: &Mailer,
    invoice: &Value,
) -> anyhow::Result<Processed> {
    let Some(SubscriptionInvoice {
        invoice_id, owner, ..
    }) = subscription_invoice(tx, invoice).await?
    else {
        return Ok(Processed::Ignored);
    };
    let Some(invoice_link) = invoice.get("hosted_invoice_url").and_then(Value::as_str) else {
        bail!("invoice {invoice_id} needs action but has no hosted_invoice_url");
    };
    let attempt = invoice.get("attempt_count").and_then(Value::as_i64).unwrap_or(1);
    let email = PaymentActionRequired {
        invoice_link: invoice_link.to_owned(),
    };
    mail::enqueue(
        tx,
        mailer,
        &owner,
        &format!("action-required:{invoice_id}:{attempt}"),
        &email,
    )
    .await?;
    Ok(Processed::Applied)
}

/// customer.subscription.trial_will_end: a reminder, once per trial end.
async fn trial_will_end(
    tx: &mut PgConnection,
    mailer: &Mailer,
    subscription: &Value,
) -> anyhow::Result<Processed> {
    let id = id_at(subscription, "/id").context("a subscription without an id")?;
    let customer = id_at(subscription, "/customer").context("a subscription without a customer")?;
    let team = team_of(tx, id, customer, subscription).await?;
    let owner = sqlx::query_scalar!(
        "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.team_id = $1 AND m.role = $2 ORDER BY m.created_at LIMIT 1",
        team,
        Role::Owner.as_str(),
    )
    .fetch_optional(&mut *tx)
    .await?
    .with_context(|| format!("team {team} has no owner to email"))?;
    let trial_end = time_at(subscription, "/trial_end");
    let ends_on = trial_end.map_or_else(|| "soon".to_owned(), |end| format!("on {}", end.date()));
    let key = format!(
        "trial-ending:{id}:{}",
        trial_end.map_or(0, OffsetDateTime::unix_timestamp)
    );
    let email = TrialEnding {
        billing_link: mailer.link("/billing"),
        ends_on,
    };
    mail::enqueue(tx, mailer, &owner, &key, &email).await?;
    Ok(Processed::Applied)
}

/// Tells the owners whose grace period has ended that paid features are paused (scheduled
/// hourly). Entitlement itself is computed at request time; this is only the email, once
/// per dunning run (keyed by the subscription and its first failure).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct NotifyGraceEnded {
    pub grace_period_days: u32,
}

impl Job for NotifyGraceEnded {
    const KIND: &'static str = crate::jobs::JobKind::NotifyGraceEnded.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let sent = notify_grace_ended(&context.db, &context.mailer, self.grace_period_days).await?;
        tracing::info!(sent, "grace period notices queued");
        Ok(())
    }
}

/// Queues the "paid features paused" email for every team whose grace period is over while
/// its subscription still waits for payment; returns how many were new.
pub async fn notify_grace_ended(db: &PgPool, mailer: &Mailer, grace_period_days: u32) -> anyhow::Result<u64> {
    let mut tx = db.begin().await?;
    let ended = sqlx::query!(
        r#"SELECT s.id, s.payment_failed_at AS "payment_failed_at!", u.email
           FROM subscriptions s
           JOIN memberships m ON m.team_id = s.team_id AND m.role = $3
           JOIN users u ON u.id = m.user_id
           WHERE s.payment_failed_at IS NOT NULL
             AND s.status = ANY($2)
             AND s.payment_failed_at + make_interval(days => $1) <= now()"#,
        i32::try_from(grace_period_days).unwrap_or(i32::MAX),
        SubscriptionStatus::entitling_sql(),
        Role::Owner.as_str(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut sent = 0;
    for row in ended {
        let key = format!(
            "grace-ended:{}:{}",
            row.id,
            row.payment_failed_at.unix_timestamp()
        );
        let email = AccessPaused {
            billing_link: mailer.link("/billing"),
        };
        if mail::enqueue(&mut tx, mailer, &row.email, &key, &email).await? {
            sent += 1;
        }
    }
    tx.commit().await?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_invoice_names_its_subscription_in_either_api_shape() {
        let acacia = json!({ "id": "in_1", "subscription": "sub_old" });
        let basil =
            json!({ "id": "in_1", "parent": { "subscription_details": { "subscription": "sub_new" } } });
        let expanded = json!({ "id": "in_1", "subscription": { "id": "sub_exp", "object": "subscription" } });
        assert_eq!(invoice_subscription(&acacia), Some("sub_old"));
        assert_eq!(invoice_subscription(&basil), Some("sub_new"));
        assert_eq!(invoice_subscription(&expanded), Some("sub_exp"));
        assert_eq!(
            invoice_subscription(&json!({ "id": "in_1", "subscription": null })),
            None
        );
    }
}

/// Properties of the readers of `data.object`: any JSON at all is read without panicking, and
/// the objects of both API shapes are read back as written.
#[cfg(test)]
pub(crate) mod properties {
    use proptest::{collection::vec, prelude::*};
    use serde_json::{Map, Number, json};

    use super::*;

    /// A key the readers look for, or any other.
    fn key() -> impl Strategy<Value = String> {
        let known = [
            "id",
            "customer",
            "status",
            "items",
            "data",
            "0",
            "price",
            "current_period_end",
            "trial_end",
            "cancel_at_period_end",
            "subscription",
            "parent",
            "subscription_details",
            "object",
            "type",
            "created",
            "livemode",
            "api_version",
        ];
        prop_oneof![
            3 => prop::sample::select(known.to_vec()).prop_map(str::to_owned),
            1 => vec(any::<char>(), 0..8).prop_map(String::from_iter),
        ]
    }

    /// Any JSON value, biased towards the keys and shapes of Stripe objects.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(-377_705_116_800),
                Just(253_402_300_799)
            ]
            .prop_map(Value::from),
            key().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec((key(), inner), 0..6).prop_map(|entries| Value::Object(Map::from_iter(entries))),
            ]
        })
    }

    /// A pointer the readers use, or any other (with JSON-pointer escapes and junk).
    fn pointer() -> impl Strategy<Value = String> {
        let used = [
            "/id",
            "/customer",
            "/subscription",
            "/parent/subscription_details/subscription",
            "/items/data/0/price/id",
            "/current_period_end",
            "/items/data/0/current_period_end",
            "/trial_end",
        ];
        prop_oneof![
            prop::sample::select(used.to_vec()).prop_map(str::to_owned),
            vec(
                prop_oneof![
                    Just("/".to_owned()),
                    Just("~".to_owned()),
                    Just("~1".to_owned()),
                    key()
                ],
                0..6
            )
            .prop_map(|pieces| pieces.concat()),
        ]
    }

    /// An id as Stripe writes it: a string, or the expanded object in its place.
    fn id_value(id: &str, expanded: bool) -> Value {
        if expanded {
            json!({ "id": id, "object": "expanded" })
        } else {
            Value::from(id)
        }
    }

    fn text() -> impl Strategy<Value = String> {
        vec(any::<char>(), 0..24).prop_map(String::from_iter)
    }

    /// A unix time `OffsetDateTime` can hold (years -9999 to 9999).
    fn unix_time() -> impl Strategy<Value = i64> {
        -377_705_116_800..=253_402_300_799_i64
    }

    proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// Whatever the object (an event's `data.object` is attacker-shaped until verified,
        /// and Stripe-shaped in any API version after), the readers answer without panicking.
        #[test]
        fn readers_never_panic_on_any_json(object in json_value(), pointer in pointer()) {
            let _ = id_at(&object, &pointer);
            let _ = time_at(&object, &pointer);
            let _ = invoice_subscription(&object);
            if let Ok(facts) = SubscriptionFacts::read(&object) {
                let _ = facts.to_json();
            }
        }

        /// A number is a time exactly when it is a whole unix time `OffsetDateTime` can hold,
        /// and reads back unchanged; anything else is none.
        #[test]
        fn time_at_reads_whole_unix_times_only(seconds in any::<i64>(), other in json_value()) {
            let read = time_at(&json!({ "at": seconds }), "/at");
            let expected = OffsetDateTime::from_unix_timestamp(seconds).ok();
            prop_assert_eq!(read, expected);
            if let Some(at) = read {
                prop_assert_eq!(at.unix_timestamp(), seconds);
            }
            if other.as_i64().is_none() {
                prop_assert_eq!(time_at(&json!({ "at": other }), "/at"), None);
            }
        }

        /// A subscription in either API shape (period end top-level before 2025-03-31, on its
        /// items after), with its customer plain or expanded and unknown fields around, reads
        /// back as written.
        #[test]
        fn subscription_facts_round_trip(
            (id, customer, status, price_id) in (text(), text(), text(), proptest::option::of(text())),
            (period_end, trial_end) in (proptest::option::of(unix_time()), proptest::option::of(unix_time())),
            cancel_at_period_end in proptest::option::of(any::<bool>()),
            (expanded_customer, on_items) in (any::<bool>(), any::<bool>()),
            extra in vec((key(), json_value()), 0..3),
        ) {
            let mut object = Map::new();
            for (key, value) in extra {
                object.insert(format!("x_{key}"), value);
            }
            object.insert("id".into(), Value::from(id.as_str()));
            object.insert("customer".into(), id_value(&customer, expanded_customer));
            object.insert("status".into(), Value::from(status.as_str()));
            if let Some(cancel) = cancel_at_period_end {
                object.insert("cancel_at_period_end".into(), Value::from(cancel));
            }
            if let Some(trial_end) = trial_end {
                object.insert("trial_end".into(), Value::from(trial_end));
            }
            let mut item = Map::new();
            if let Some(price_id) = &price_id {
                // An item's price is always the Price object, never its id alone.
                item.insert("price".into(), json!({ "id": price_id, "object": "price" }));
            }
            if let Some(period_end) = period_end {
                if on_items {
                    item.insert("current_period_end".into(), Value::from(period_end));
                } else {
                    object.insert("current_period_end".into(), Value::from(period_end));
                }
            }
            object.insert("items".into(), json!({ "object": "list", "data": [item] }));
            let object = Value::Object(object);

            let unix = |at: Option<i64>| at.map(|at| OffsetDateTime::from_unix_timestamp(at).unwrap());
            let expected = SubscriptionFacts {
                id: &id,
                customer: &customer,
                status: &status,
                price_id: price_id.as_deref(),
                item_id: None,
                quantity: None,
                current_period_end: unix(period_end),
                cancel_at_period_end: cancel_at_period_end.unwrap_or(false),
                trial_end: unix(trial_end),
            };
            prop_assert_eq!(SubscriptionFacts::read(&object).unwrap(), expected);
        }

        /// An invoice names its subscription in either API shape, plain or expanded; the
        /// older field wins when both are there, and `null` is no subscription.
        #[test]
        fn invoice_subscription_round_trips(
            old in proptest::option::of(text()),
            new in proptest::option::of(text()),
            (expanded, null_old) in (any::<bool>(), any::<bool>()),
            extra in vec((key(), json_value()), 0..3),
        ) {
            let mut invoice: Map<String, Value> =
                extra.into_iter().map(|(key, value)| (format!("x_{key}"), value)).collect();
            invoice.insert("id".into(), Value::from("in_1"));
            match &old {
                Some(old) => { invoice.insert("subscription".into(), id_value(old, expanded)); }
                None if null_old => { invoice.insert("subscription".into(), Value::Null); }
                None => {}
            }
            if let Some(new) = &new {
                invoice.insert(
                    "parent".into(),
                    json!({ "subscription_details": { "subscription": id_value(new, expanded) } }),
                );
            }
            let invoice = Value::Object(invoice);
            prop_assert_eq!(invoice_subscription(&invoice), old.as_deref().or(new.as_deref()));
        }
    }
}

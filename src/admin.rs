//! The operator console's reads and actions (SPEC "Operator console"); the pages are in
//! `http::admin`. Every action is written to `operator_audit_log` with the operator, in the
//! transaction that makes it.
//!
//! Lists are paged by keyset (`LIMIT` one more than a page, to know whether another follows)
//! and each is served by an index of `migrations/20261205110000_operators.sql`.

use std::{collections::HashMap, net::IpAddr};

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    accounts::{
        security::{self, Event},
        sessions,
    },
    billing::{entitlement::Subscription, pricing::PriceFacts},
    domain::SubscriptionStatus,
    error::{AppError, Result},
};

/// Rows on one page of a list.
pub const PAGE: i64 = 50;

/// Grants (`true`) or revokes the operator flag of the account with `email`; `false` when no
/// account has that address (`keel admin grant|revoke`).
pub async fn set_operator(db: &PgPool, email: &str, operator: bool) -> Result<bool> {
    let updated = sqlx::query!(
        "UPDATE users SET is_operator = $2, updated_at = now() WHERE lower(email) = lower($1)",
        email,
        operator,
    )
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Who acts in the console, and from where: what the audit log records.
#[derive(Clone, Copy, Debug)]
pub struct OperatorActor<'a> {
    pub user_id: Uuid,
    pub email: &'a str,
    pub client: IpAddr,
}

/// Appends one row to the operator audit log.
pub async fn audit(
    conn: &mut PgConnection,
    operator: OperatorActor<'_>,
    action: &str,
    target: &str,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO operator_audit_log (operator_id, operator_email, action, target, client_ip, detail)
         VALUES ($1, $2, $3, $4, $5::text::inet, $6)",
        operator.user_id,
        operator.email,
        action,
        target,
        operator.client.to_string(),
        detail,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub struct AuditRow {
    pub at: OffsetDateTime,
    pub operator_email: String,
    pub action: String,
    pub detail: Option<String>,
}

/// The latest operator actions on `target` (`user:<id>`, `event:<id>`…).
pub async fn audit_of(db: &PgPool, target: &str) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as!(
        AuditRow,
        "SELECT at, operator_email, action, detail FROM operator_audit_log
         WHERE target = $1 ORDER BY id DESC LIMIT $2",
        target,
        PAGE,
    )
    .fetch_all(db)
    .await?)
}

/// The counts of `GET /admin`.
pub struct Overview {
    pub users: i64,
    pub teams: i64,
    pub subscriptions: Vec<(String, i64)>,
    pub in_dunning: i64,
    pub dead_jobs: i64,
    pub queued_jobs: i64,
    pub unsent_emails: i64,
    pub unprocessed_events: i64,
    /// Active subscriptions' quantities per price, for the monthly recurring revenue.
    pub active_by_price: Vec<(Option<String>, i64)>,
}

pub async fn overview(db: &PgPool) -> Result<Overview> {
    let counts = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM users) AS "users!",
                  (SELECT count(*) FROM teams) AS "teams!",
                  (SELECT count(*) FROM subscriptions
                   WHERE payment_failed_at IS NOT NULL AND status IN ('past_due', 'unpaid')) AS "in_dunning!",
                  (SELECT count(*) FROM jobs WHERE status = 'dead') AS "dead_jobs!",
                  (SELECT count(*) FROM jobs WHERE status = 'queued') AS "queued_jobs!",
                  (SELECT count(*) FROM emails WHERE status <> 'sent') AS "unsent_emails!",
                  (SELECT count(*) FROM stripe_events WHERE processed_at IS NULL) AS "unprocessed_events!""#
    )
    .fetch_one(db)
    .await?;
    let subscriptions = sqlx::query!(
        r#"SELECT status, count(*) AS "count!" FROM subscriptions GROUP BY status ORDER BY count(*) DESC"#
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|row| (row.status, row.count))
    .collect();
    let active_by_price = sqlx::query!(
        r#"SELECT price_id, sum(coalesce(quantity, 1))::bigint AS "quantity!" FROM subscriptions
           WHERE status = 'active' GROUP BY price_id"#
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|row| (row.price_id, row.quantity))
    .collect();
    Ok(Overview {
        users: counts.users,
        teams: counts.teams,
        subscriptions,
        in_dunning: counts.in_dunning,
        dead_jobs: counts.dead_jobs,
        queued_jobs: counts.queued_jobs,
        unsent_emails: counts.unsent_emails,
        unprocessed_events: counts.unprocessed_events,
        active_by_price,
    })
}

/// Monthly recurring revenue per currency (in its smallest unit), from the active
/// subscriptions' quantities and their prices; and how many subscriptions had a price it
/// could not count (not in `STRIPE_PRICES`, unknown to Stripe, or metered).
pub fn monthly_revenue(
    active_by_price: &[(Option<String>, i64)],
    prices: &HashMap<String, PriceFacts>,
) -> (Vec<(String, i64)>, i64) {
    let mut revenue: HashMap<String, f64> = HashMap::new();
    let mut uncounted = 0;
    for (price_id, quantity) in active_by_price {
        let facts = price_id.as_ref().and_then(|id| prices.get(id));
        let monthly = facts.and_then(|facts| {
            let per_month = match facts.interval.as_deref()? {
                "day" => 365.0 / 12.0,
                "week" => 52.0 / 12.0,
                "month" => 1.0,
                "year" => 1.0 / 12.0,
                _ => return None,
            } / f64::from(facts.interval_count.max(1));
            Some((facts.currency.clone(), facts.unit_amount? as f64 * per_month))
        });
        match monthly {
            Some((currency, amount)) => *revenue.entry(currency).or_default() += amount * *quantity as f64,
            None => uncounted += quantity,
        }
    }
    let mut revenue: Vec<(String, i64)> = revenue
        .into_iter()
        .map(|(currency, amount)| (currency, amount.round() as i64))
        .collect();
    revenue.sort();
    (revenue, uncounted)
}

pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub created_at: OffsetDateTime,
    pub disabled: bool,
    pub operator: bool,
}

/// Users whose address starts with `query` (or, when it starts with `@`, ends with it), in
/// address order after `after`; one more than a page.
pub async fn users(db: &PgPool, query: &str, after: Option<&str>) -> Result<Vec<UserRow>> {
    let query = query.trim().to_lowercase();
    let after = after.map(str::to_lowercase).unwrap_or_default();
    let rows = if query.starts_with('@') {
        let reversed: String = query.chars().rev().collect();
        sqlx::query_as!(
            UserRow,
            r#"SELECT id, email, created_at, disabled_at IS NOT NULL AS "disabled!", is_operator AS operator
               FROM users
               WHERE reverse(lower(email)) COLLATE "C" LIKE $1 || '%' AND lower(email) COLLATE "C" > $2
               ORDER BY lower(email) COLLATE "C"
               LIMIT $3"#,
            like_escape(&reversed),
            after,
            PAGE + 1,
        )
        .fetch_all(db)
        .await?
    } else {
        sqlx::query_as!(
            UserRow,
            r#"SELECT id, email, created_at, disabled_at IS NOT NULL AS "disabled!", is_operator AS operator
               FROM users
               WHERE lower(email) COLLATE "C" LIKE $1 || '%' AND lower(email) COLLATE "C" > $2
               ORDER BY lower(email) COLLATE "C"
               LIMIT $3"#,
            like_escape(&query),
            after,
            PAGE + 1,
        )
        .fetch_all(db)
        .await?
    };
    Ok(rows)
}

/// `text` with LIKE's wildcards taken literally.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

pub struct UserDetail {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub created_at: OffsetDateTime,
    pub disabled_at: Option<OffsetDateTime>,
    pub operator: bool,
    pub two_factor: bool,
    pub teams: Vec<UserTeam>,
    pub sessions: Vec<UserSession>,
    pub log: Vec<security::Entry>,
}

pub struct UserTeam {
    pub id: Uuid,
    pub name: String,
    pub role: String,
}

pub struct UserSession {
    pub started: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

pub async fn user(db: &PgPool, id: Uuid) -> Result<UserDetail> {
    let user = sqlx::query!(
        r#"SELECT id, email, email_verified_at IS NOT NULL AS "verified!", created_at, disabled_at, is_operator,
                  EXISTS (SELECT 1 FROM two_factor t WHERE t.user_id = u.id AND t.enabled_at IS NOT NULL) AS "two_factor!"
           FROM users u WHERE id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await?
    .ok_or(AppError::NotFound)?;
    let teams = sqlx::query_as!(
        UserTeam,
        "SELECT t.id, t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id
         WHERE m.user_id = $1 ORDER BY m.created_at",
        id,
    )
    .fetch_all(db)
    .await?;
    let sessions = sqlx::query_as!(
        UserSession,
        "SELECT created_at AS started, last_seen_at AS last_seen, host(client_ip) AS client_ip, user_agent
         FROM sessions
         WHERE user_id = $1 AND expires_at > now() AND last_seen_at > now() - make_interval(secs => $2)
         ORDER BY last_seen_at DESC",
        id,
        sessions::IDLE_TIMEOUT.as_secs_f64(),
    )
    .fetch_all(db)
    .await?;
    Ok(UserDetail {
        id: user.id,
        email: user.email,
        email_verified: user.verified,
        created_at: user.created_at,
        disabled_at: user.disabled_at,
        operator: user.is_operator,
        two_factor: user.two_factor,
        teams,
        sessions,
        log: security::recent(db, id, PAGE).await?,
    })
}

/// What an operator may do to a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    /// The user cannot sign in; their sessions end.
    Disable,
    Enable,
    /// Every session of the user ends.
    EndSessions,
}

impl UserAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "user.disable",
            Self::Enable => "user.enable",
            Self::EndSessions => "user.end_sessions",
        }
    }
}

/// Applies `action` to user `id`, with its security-log and audit rows, in one transaction.
/// `NotFound` for an unknown user; an operator cannot disable themselves.
pub async fn act_on_user(
    db: &PgPool,
    operator: OperatorActor<'_>,
    id: Uuid,
    action: UserAction,
) -> Result<()> {
    if action == UserAction::Disable && id == operator.user_id {
        return Err(AppError::Conflict(
            "You cannot disable your own account.".to_owned(),
        ));
    }
    let mut tx = db.begin().await?;
    let disabled = match action {
        UserAction::Disable => Some(true),
        UserAction::Enable => Some(false),
        UserAction::EndSessions => None,
    };
    let found = sqlx::query_scalar!(
        r#"UPDATE users SET disabled_at = CASE WHEN $2::boolean IS NULL THEN disabled_at
                                               WHEN $2 THEN coalesce(disabled_at, now()) END,
                            updated_at = now()
           WHERE id = $1 RETURNING id"#,
        id,
        disabled,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Err(AppError::NotFound);
    }
    let event = match action {
        UserAction::Disable => Event::DisabledByOperator,
        UserAction::Enable => Event::EnabledByOperator,
        UserAction::EndSessions => Event::SessionsEndedByOperator,
    };
    if action != UserAction::Enable {
        sessions::delete_all_of_user(&mut tx, id, None).await?;
        sqlx::query!("DELETE FROM pending_logins WHERE user_id = $1", id)
            .execute(&mut *tx)
            .await?;
    }
    // Without the operator's address: the user reads this log.
    security::record(&mut tx, id, event, None).await?;
    audit(&mut tx, operator, action.as_str(), &format!("user:{id}"), None).await?;
    tx.commit().await?;
    tracing::info!(operator = %operator.user_id, user_id = %id, action = action.as_str(), "operator action");
    Ok(())
}

/// A filter of the console's lists, read from its query string: an unknown value is a 400
/// that names the ones allowed.
pub trait ListFilter: Sized + Copy + 'static {
    const NAME: &'static str;
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;

    fn parse(raw: Option<&str>) -> Result<Option<Self>> {
        let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
            return Ok(None);
        };
        Self::ALL
            .iter()
            .copied()
            .find(|value| value.as_str() == raw)
            .map(Some)
            .ok_or_else(|| {
                let allowed: Vec<&str> = Self::ALL.iter().map(|value| value.as_str()).collect();
                AppError::BadRequest(format!("{} must be one of: {}.", Self::NAME, allowed.join(", ")))
            })
    }
}

/// Where a stored Stripe event is: processed, waiting for its job, or its job failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventState {
    Processed,
    Waiting,
    Failing,
}

impl ListFilter for EventState {
    const NAME: &'static str = "state";
    const ALL: &'static [Self] = &[Self::Processed, Self::Waiting, Self::Failing];

    fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Waiting => "waiting",
            Self::Failing => "failing",
        }
    }
}

pub struct EventRow {
    pub id: String,
    pub kind: String,
    pub received_at: OffsetDateTime,
    pub processed_at: Option<OffsetDateTime>,
    /// The processing job's last error, while it fails.
    pub last_error: Option<String>,
}

impl EventRow {
    pub fn path(&self) -> String {
        event_path(&self.id)
    }
}

/// `/admin/events/<id>`, the id percent-encoded (Stripe's ids are `evt_` and letters and
/// digits, but the column takes any text after `evt_`).
pub fn event_path(id: &str) -> String {
    let mut path = String::from("/admin/events/");
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// A position in the events list: the last row shown (received at, id).
pub type EventCursor = (OffsetDateTime, String);

/// Stored events, newest first, of `kind` and in `state` when given, after `before`.
pub async fn events(
    db: &PgPool,
    kind: Option<&str>,
    state: Option<EventState>,
    before: Option<&EventCursor>,
) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as!(
        EventRow,
        r#"SELECT e.id, e.type AS kind, e.received_at, e.processed_at, j.last_error AS "last_error?"
           FROM stripe_events e
           LEFT JOIN LATERAL (
               SELECT last_error FROM jobs
               WHERE kind = 'stripe.process_event' AND payload ->> 'event_id' = e.id
               ORDER BY id DESC LIMIT 1
           ) j ON e.processed_at IS NULL
           WHERE ($1::text IS NULL OR e.type = $1)
             AND CASE $2::text
                     WHEN 'processed' THEN e.processed_at IS NOT NULL
                     WHEN 'waiting' THEN e.processed_at IS NULL AND j.last_error IS NULL
                     WHEN 'failing' THEN e.processed_at IS NULL AND j.last_error IS NOT NULL
                     ELSE true
                 END
             AND ($3::timestamptz IS NULL OR (e.received_at, e.id) < ($3, $4))
           ORDER BY e.received_at DESC, e.id DESC
           LIMIT $5"#,
        kind,
        state.map(EventState::as_str),
        before.map(|(at, _)| *at),
        before.map(|(_, id)| id.as_str()),
        PAGE + 1,
    )
    .fetch_all(db)
    .await?)
}

pub struct EventDetail {
    pub id: String,
    pub kind: String,
    pub api_version: Option<String>,
    pub livemode: bool,
    pub created: OffsetDateTime,
    pub received_at: OffsetDateTime,
    pub processed_at: Option<OffsetDateTime>,
    pub payload: String,
    pub job_status: Option<String>,
    pub attempts: Option<i32>,
    pub last_error: Option<String>,
}

impl EventDetail {
    pub fn path(&self) -> String {
        event_path(&self.id)
    }
}

pub async fn event(db: &PgPool, id: &str) -> Result<EventDetail> {
    sqlx::query_as!(
        EventDetail,
        r#"SELECT e.id, e.type AS kind, e.api_version, e.livemode, e.created, e.received_at, e.processed_at,
                  e.payload, j.status AS "job_status?", j.attempts AS "attempts?", j.last_error AS "last_error?"
           FROM stripe_events e
           LEFT JOIN LATERAL (
               SELECT status, attempts, last_error FROM jobs
               WHERE kind = 'stripe.process_event' AND payload ->> 'event_id' = e.id
               ORDER BY id DESC LIMIT 1
           ) j ON true
           WHERE e.id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await?
    .ok_or(AppError::NotFound)
}

/// The jobs the console lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Dead,
    /// Queued again after a failed attempt.
    Failing,
    Queued,
}

impl ListFilter for JobState {
    const NAME: &'static str = "state";
    const ALL: &'static [Self] = &[Self::Dead, Self::Failing, Self::Queued];

    fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Failing => "failing",
            Self::Queued => "queued",
        }
    }
}

pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: OffsetDateTime,
    pub last_error: Option<String>,
}

/// Jobs in `state`, newest first, before the id `before`.
pub async fn jobs(db: &PgPool, state: JobState, before: Option<i64>) -> Result<Vec<JobRow>> {
    Ok(sqlx::query_as!(
        JobRow,
        "SELECT id, kind, status, attempts, max_attempts, run_at, last_error FROM jobs
         WHERE CASE $1::text
                   WHEN 'dead' THEN status = 'dead'
                   WHEN 'failing' THEN status = 'queued' AND last_error IS NOT NULL
                   ELSE status = 'queued'
               END
           AND id < coalesce($2, 9223372036854775807)
         ORDER BY id DESC
         LIMIT $3",
        state.as_str(),
        before,
        PAGE + 1,
    )
    .fetch_all(db)
    .await?)
}

/// The outbox's states, as the console names them (`queued` is the table's `pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailStatus {
    Queued,
    Sent,
    Failed,
}

impl ListFilter for EmailStatus {
    const NAME: &'static str = "status";
    const ALL: &'static [Self] = &[Self::Queued, Self::Sent, Self::Failed];

    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

impl EmailStatus {
    const fn column(self) -> &'static str {
        match self {
            Self::Queued => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

/// An email as the console shows it: never its body.
pub struct EmailRow {
    pub id: i64,
    pub recipient: String,
    pub subject: String,
    pub status: String,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
}

pub async fn emails(db: &PgPool, status: Option<EmailStatus>, before: Option<i64>) -> Result<Vec<EmailRow>> {
    Ok(sqlx::query_as!(
        EmailRow,
        "SELECT id, recipient, subject, status, last_error, created_at, sent_at FROM emails
         WHERE ($1::text IS NULL OR status = $1)
           AND id < coalesce($2, 9223372036854775807)
         ORDER BY id DESC
         LIMIT $3",
        status.map(EmailStatus::column),
        before,
        PAGE + 1,
    )
    .fetch_all(db)
    .await?)
}

/// Queues a dead or failing job to run now (`keel jobs retry`), audited.
pub async fn retry_job(db: &PgPool, operator: OperatorActor<'_>, id: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    if !crate::jobs::retry(&mut tx, id).await? {
        return Err(AppError::NotFound);
    }
    audit(&mut tx, operator, "job.retry", &format!("job:{id}"), None).await?;
    tx.commit().await?;
    Ok(())
}

/// Processes a stored event again (`keel stripe replay`); the outcome, or why processing
/// failed, goes to the audit log, where the event's page shows it.
pub async fn replay_event(
    db: &PgPool,
    mailer: &crate::mail::Mailer,
    mode: Option<crate::billing::stripe::KeyMode>,
    operator: OperatorActor<'_>,
    id: &str,
) -> Result<()> {
    let known = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM stripe_events WHERE id = $1) AS "known!""#,
        id
    )
    .fetch_one(db)
    .await?;
    if !known {
        return Err(AppError::NotFound);
    }
    let outcome = match crate::billing::events::replay(db, mailer, mode, id).await {
        Ok(processed) => format!("replayed: {processed}"),
        Err(error) => format!("replay failed: {error:#}"),
    };
    let mut conn = db.acquire().await?;
    audit(
        &mut conn,
        operator,
        "event.replay",
        &format!("event:{id}"),
        Some(&outcome),
    )
    .await?;
    tracing::info!(operator = %operator.user_id, event_id = id, outcome, "operator replayed an event");
    Ok(())
}

pub struct TeamRow {
    pub id: Uuid,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub members: i64,
    /// The newest subscription's status.
    pub status: Option<String>,
}

/// A position in the teams list: the last row shown (created at, id).
pub type TeamCursor = (OffsetDateTime, Uuid);

/// Teams whose name starts with `query`, or, when it has an `@`, with a member whose address
/// starts with it (or ends with it, when it starts with `@`); newest first, after `before`.
pub async fn teams(db: &PgPool, query: &str, before: Option<&TeamCursor>) -> Result<Vec<TeamRow>> {
    let query = query.trim().to_lowercase();
    let (name, email_prefix, email_suffix) = match query.find('@') {
        None => (like_escape(&query), None, None),
        Some(0) => (
            String::new(),
            None,
            Some(like_escape(&query.chars().rev().collect::<String>())),
        ),
        Some(_) => (String::new(), Some(like_escape(&query)), None),
    };
    Ok(sqlx::query_as!(
        TeamRow,
        r#"SELECT t.id, t.name, t.created_at,
                  (SELECT count(*) FROM memberships m WHERE m.team_id = t.id) AS "members!",
                  (SELECT status FROM subscriptions s WHERE s.team_id = t.id ORDER BY state_as_of DESC LIMIT 1) AS status
           FROM teams t
           WHERE lower(t.name) COLLATE "C" LIKE $1 || '%'
             AND ($2::text IS NULL OR t.id IN (
                     SELECT m.team_id FROM memberships m JOIN users u ON u.id = m.user_id
                     WHERE lower(u.email) COLLATE "C" LIKE $2 || '%'))
             AND ($3::text IS NULL OR t.id IN (
                     SELECT m.team_id FROM memberships m JOIN users u ON u.id = m.user_id
                     WHERE reverse(lower(u.email)) COLLATE "C" LIKE $3 || '%'))
             AND ($4::timestamptz IS NULL OR (t.created_at, t.id) < ($4, $5))
           ORDER BY t.created_at DESC, t.id DESC
           LIMIT $6"#,
        name,
        email_prefix,
        email_suffix,
        before.map(|(at, _)| *at),
        before.map(|(_, id)| *id),
        PAGE + 1,
    )
    .fetch_all(db)
    .await?)
}

pub struct TeamDetail {
    pub id: Uuid,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub customer: Option<String>,
    pub members: Vec<TeamMember>,
    pub subscription: Option<TeamSubscription>,
    pub billing_log: Vec<BillingLogRow>,
}

pub struct TeamMember {
    pub user_id: Uuid,
    pub email: String,
    pub role: String,
    pub since: OffsetDateTime,
}

pub struct TeamSubscription {
    pub id: String,
    /// Seats, for a per-seat price.
    pub quantity: Option<i32>,
    /// What entitlement and `/billing` read: status, price, period, dunning.
    pub facts: Subscription,
}

pub struct BillingLogRow {
    pub at: OffsetDateTime,
    pub source: String,
    pub action: String,
    pub subscription_id: String,
    pub before: Option<String>,
    pub after: String,
}

pub async fn team(db: &PgPool, id: Uuid) -> Result<TeamDetail> {
    let team = sqlx::query!(
        "SELECT id, name, created_at, stripe_customer_id FROM teams WHERE id = $1",
        id
    )
    .fetch_optional(db)
    .await?
    .ok_or(AppError::NotFound)?;
    let members = sqlx::query_as!(
        TeamMember,
        "SELECT u.id AS user_id, u.email, m.role, m.created_at AS since
         FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.team_id = $1 ORDER BY m.created_at",
        id,
    )
    .fetch_all(db)
    .await?;
    let subscription = sqlx::query!(
        r#"SELECT id, status AS "status: SubscriptionStatus", price_id, quantity, current_period_end,
                  cancel_at_period_end, payment_failed_at, state_as_of
           FROM subscriptions WHERE team_id = $1 ORDER BY state_as_of DESC LIMIT 1"#,
        id,
    )
    .fetch_optional(db)
    .await?
    .map(|row| TeamSubscription {
        id: row.id,
        quantity: row.quantity,
        facts: Subscription {
            status: row.status,
            price_id: row.price_id,
            current_period_end: row.current_period_end,
            cancel_at_period_end: row.cancel_at_period_end,
            payment_failed_at: row.payment_failed_at,
            state_as_of: row.state_as_of,
        },
    });
    let billing_log = sqlx::query_as!(
        BillingLogRow,
        r#"SELECT at, source, action, subscription_id, before::text AS before, after::text AS "after!"
           FROM billing_audit_log WHERE team_id = $1 ORDER BY id DESC LIMIT $2"#,
        id,
        PAGE,
    )
    .fetch_all(db)
    .await?;
    Ok(TeamDetail {
        id: team.id,
        name: team.name,
        created_at: team.created_at,
        customer: team.stripe_customer_id,
        members,
        subscription,
        billing_log,
    })
}

/// Reconciles team `id`'s subscriptions with Stripe now, audited with the summary.
pub async fn reconcile_team(
    db: &PgPool,
    stripe: Option<&crate::billing::stripe::Stripe>,
    per_seat_prices: &[String],
    operator: OperatorActor<'_>,
    id: Uuid,
) -> Result<()> {
    let customer = sqlx::query_scalar!("SELECT stripe_customer_id FROM teams WHERE id = $1", id)
        .fetch_optional(db)
        .await?
        .ok_or(AppError::NotFound)?
        .ok_or_else(|| {
            AppError::Conflict("This team has no Stripe customer yet: nothing to reconcile.".to_owned())
        })?;
    let stripe = stripe.ok_or_else(|| {
        AppError::Conflict(
            "Billing is not configured (STRIPE_SECRET_KEY): nothing to reconcile with.".to_owned(),
        )
    })?;
    let outcome =
        match crate::billing::reconcile::reconcile_customer(db, stripe, per_seat_prices, &customer).await {
            Ok(summary) => summary.to_string(),
            Err(error) => format!("reconciliation failed: {error:#}"),
        };
    let mut conn = db.acquire().await?;
    audit(
        &mut conn,
        operator,
        "team.reconcile",
        &format!("team:{id}"),
        Some(&outcome),
    )
    .await?;
    Ok(())
}

/// Starts viewing the product as user `id`: a session of theirs for 30 minutes, marked with
/// the operator, in their first team. Recorded in the operator audit log, the user's
/// security log and the log of each of their teams. `Conflict` for the operator themselves
/// or a disabled user.
pub async fn impersonate(
    db: &PgPool,
    operator: OperatorActor<'_>,
    id: Uuid,
) -> Result<crate::accounts::SecretToken> {
    if id == operator.user_id {
        return Err(AppError::Conflict("You are already yourself.".to_owned()));
    }
    let mut tx = db.begin().await?;
    let user = sqlx::query!(
        r#"SELECT email, disabled_at IS NOT NULL AS "disabled!" FROM users WHERE id = $1"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::NotFound)?;
    if user.disabled {
        return Err(AppError::Conflict(
            "This account is disabled: enable it first.".to_owned(),
        ));
    }
    let teams = sqlx::query_scalar!(
        "SELECT team_id FROM memberships WHERE user_id = $1 ORDER BY (role = 'owner') DESC, created_at",
        id
    )
    .fetch_all(&mut *tx)
    .await?;
    let team = *teams.first().ok_or(AppError::NotFound)?;
    let token = sessions::create_impersonation(&mut tx, id, team, operator.user_id).await?;
    log_impersonation(&mut tx, operator, id, &user.email, &teams, true).await?;
    tx.commit().await?;
    tracing::info!(operator = %operator.user_id, user_id = %id, "operator started impersonating");
    Ok(token)
}

/// Ends the impersonation session behind `token` (the operator's, for user `id`).
pub async fn stop_impersonating(
    db: &PgPool,
    operator: OperatorActor<'_>,
    id: Uuid,
    token: &crate::accounts::SecretToken,
) -> Result<()> {
    let mut tx = db.begin().await?;
    sessions::delete(&mut tx, token).await?;
    let email = sqlx::query_scalar!("SELECT email FROM users WHERE id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    let teams = sqlx::query_scalar!("SELECT team_id FROM memberships WHERE user_id = $1", id)
        .fetch_all(&mut *tx)
        .await?;
    log_impersonation(&mut tx, operator, id, &email, &teams, false).await?;
    tx.commit().await?;
    tracing::info!(operator = %operator.user_id, user_id = %id, "operator stopped impersonating");
    Ok(())
}

async fn log_impersonation(
    conn: &mut PgConnection,
    operator: OperatorActor<'_>,
    id: Uuid,
    email: &str,
    teams: &[Uuid],
    started: bool,
) -> Result<()> {
    use crate::accounts::audit;
    let (event, action, name) = if started {
        (
            Event::ImpersonationStarted,
            audit::Action::ImpersonationStarted,
            "user.impersonate",
        )
    } else {
        (
            Event::ImpersonationStopped,
            audit::Action::ImpersonationStopped,
            "user.impersonation_stop",
        )
    };
    security::record(conn, id, event, None).await?;
    let actor = audit::Actor {
        user_id: operator.user_id,
        email: operator.email,
        client: operator.client,
    };
    for team in teams {
        audit::record(conn, *team, Some(actor), audit::Event::new(action).on(email)).await?;
    }
    self::audit(conn, operator, name, &format!("user:{id}"), None).await
}

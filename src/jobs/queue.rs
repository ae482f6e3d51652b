//! The `jobs` table. Enqueueing takes the caller's connection, so a job is written in the same
//! transaction as the change that causes it; claiming and recording outcomes are the worker's.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::Job;

pub type JobId = i64;

/// The channel the `jobs_notify` trigger notifies on every insert. The trigger spells it, and
/// [`NOTIFY_OPT_OUT`], in SQL (migrations); `scripts/rename.sh` changes all three together.
pub const NOTIFY_CHANNEL: &str = "keel_jobs";
/// The setting a transaction turns `off` to enqueue without that notification (see `Waker`).
pub const NOTIFY_OPT_OUT: &str = "keel.jobs_notify";

/// Longest error text kept with a job.
const MAX_ERROR_LEN: usize = 2000;

#[derive(Debug, Default)]
pub struct EnqueueOptions {
    /// Not before this time (default: now).
    pub run_at: Option<OffsetDateTime>,
    /// A job with this key already in the table makes this enqueue a no-op.
    pub key: Option<String>,
}

/// Adds `job` to the queue on `conn` (usually inside the caller's transaction).
#[tracing::instrument(skip_all, fields(kind = J::KIND))]
pub async fn enqueue<J: Job>(conn: &mut PgConnection, job: &J) -> anyhow::Result<JobId> {
    enqueue_with(conn, job, EnqueueOptions::default())
        .await?
        .context("a job without a key is always added")
}

/// Like [`enqueue`]; `None` when `options.key` is already taken.
#[tracing::instrument(skip_all, fields(kind = J::KIND, key = options.key))]
pub async fn enqueue_with<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    options: EnqueueOptions,
) -> anyhow::Result<Option<JobId>> {
    insert(conn, J::KIND, &to_payload(job)?, J::MAX_ATTEMPTS, options).await
}

/// A job's row, for a feature that inserts it in the same SQL statement as its own rows
/// (one round trip, atomic without a transaction; see `billing::webhooks::store`). Columns
/// not given take their defaults: queued, to run now, no key.
pub struct NewJob {
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
}

impl NewJob {
    pub fn of<J: Job>(job: &J) -> anyhow::Result<Self> {
        Ok(Self {
            kind: J::KIND,
            payload: to_payload(job)?,
            max_attempts: J::MAX_ATTEMPTS,
        })
    }
}

pub(super) fn to_payload(job: &impl Serialize) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(job).context("serializing a job payload")
}

pub(super) async fn insert(
    conn: &mut PgConnection,
    kind: &str,
    payload: &serde_json::Value,
    max_attempts: i32,
    options: EnqueueOptions,
) -> anyhow::Result<Option<JobId>> {
    let id = sqlx::query_scalar!(
        r#"INSERT INTO jobs (kind, payload, max_attempts, run_at, key)
           VALUES ($1, $2, $3, coalesce($4, now()), $5)
           ON CONFLICT (key) DO NOTHING
           RETURNING id"#,
        kind,
        payload,
        max_attempts,
        options.run_at,
        options.key,
    )
    .fetch_optional(conn)
    .await
    .context("inserting a job")?;
    Ok(id)
}

/// A job a worker holds the lease of.
#[derive(Debug)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This run's attempt number, from 1.
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Takes up to `limit` runnable jobs of the given `kinds` for `worker`: running jobs whose
/// lease ran out (their worker died) that have attempts left, oldest lease first, then due
/// queued jobs in order. Each part is read through its own index (`jobs_leases`, `jobs_due`)
/// and stops at `limit` rows, so a claim costs the same however long the backlog is; one
/// `WHERE` for both would read and sort every queued row. (The ids are matched as an array:
/// joined to the parts, the planner guesses a tenth of the table and scans all of it.) `SKIP LOCKED` makes concurrent
/// claims take disjoint sets; `kinds` keeps a worker (an older version in a rolling deploy,
/// say) from burning the attempts of jobs it cannot run.
pub async fn claim(
    db: &PgPool,
    worker: &str,
    kinds: &[String],
    limit: i64,
    lease: Duration,
) -> sqlx::Result<Vec<ClaimedJob>> {
    sqlx::query_as!(
        ClaimedJob,
        r#"WITH expired AS (
               SELECT id FROM jobs
               WHERE status = 'running' AND locked_until < now() AND attempts < max_attempts
                 AND kind = ANY($4)
               ORDER BY locked_until
               LIMIT $1
               FOR UPDATE SKIP LOCKED
           ), due AS (
               SELECT id FROM jobs
               WHERE status = 'queued' AND run_at <= now() AND kind = ANY($4)
               ORDER BY run_at, id
               LIMIT $1 - (SELECT count(*) FROM expired)
               FOR UPDATE SKIP LOCKED
           )
           UPDATE jobs
           SET status = 'running', attempts = jobs.attempts + 1, locked_by = $2,
               locked_until = now() + make_interval(secs => $3), updated_at = now()
           WHERE id = ANY(ARRAY(SELECT id FROM expired UNION ALL SELECT id FROM due))
           RETURNING jobs.id, jobs.kind, jobs.payload, jobs.attempts, jobs.max_attempts"#,
        limit,
        worker,
        lease.as_secs_f64(),
        kinds,
    )
    .fetch_all(db)
    .await
}

/// Renews the lease `worker` holds on job `id`. `false` when it no longer holds it.
pub async fn extend_lease(db: &PgPool, worker: &str, id: JobId, lease: Duration) -> sqlx::Result<bool> {
    let renewed = sqlx::query!(
        "UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND locked_by = $2 AND status = 'running'",
        id,
        worker,
        lease.as_secs_f64(),
    )
    .execute(db)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// A finished job is deleted. `false` when `worker` no longer held it (its lease had run out
/// and another worker took the job).
pub async fn complete(db: &PgPool, id: JobId, worker: &str) -> sqlx::Result<bool> {
    let deleted = sqlx::query!("DELETE FROM jobs WHERE id = $1 AND locked_by = $2", id, worker)
        .execute(db)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

#[derive(Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queued again, to run after the backoff.
    Retrying,
    /// Out of attempts.
    Dead,
    /// The lease had been lost: another worker owns the job now.
    LeaseLost,
}

/// Records a failed attempt: queued again after `retry_in`, or dead when out of attempts or
/// when the failure is `permanent`.
pub async fn fail(
    db: &PgPool,
    id: JobId,
    worker: &str,
    error: &str,
    retry_in: Duration,
    permanent: bool,
) -> sqlx::Result<AfterFailure> {
    let error = truncate(error, MAX_ERROR_LEN);
    let dead = sqlx::query_scalar!(
        r#"UPDATE jobs
           SET status = CASE WHEN $5 OR attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
               run_at = now() + make_interval(secs => $4),
               last_error = $3, locked_until = NULL, locked_by = NULL, updated_at = now()
           WHERE id = $1 AND locked_by = $2
           RETURNING status = 'dead' AS "dead!""#,
        id,
        worker,
        error,
        retry_in.as_secs_f64(),
        permanent,
    )
    .fetch_optional(db)
    .await?;
    Ok(match dead {
        Some(true) => AfterFailure::Dead,
        Some(false) => AfterFailure::Retrying,
        None => AfterFailure::LeaseLost,
    })
}

/// Running jobs whose lease ran out on their last attempt will not be claimed again: they
/// are dead. Returns how many.
pub async fn bury_abandoned(db: &PgPool) -> sqlx::Result<u64> {
    let buried = sqlx::query!(
        "UPDATE jobs
         SET status = 'dead', locked_until = NULL, locked_by = NULL, updated_at = now(),
             last_error = concat_ws('; ', last_error, 'the worker stopped during the last attempt (lease expired)')
         WHERE status = 'running' AND locked_until < now() AND attempts >= max_attempts"
    )
    .execute(db)
    .await?;
    Ok(buried.rows_affected())
}

/// When the next job becomes runnable (a queued job's `run_at`, or a lease running out).
pub async fn next_due(db: &PgPool) -> sqlx::Result<Option<OffsetDateTime>> {
    sqlx::query_scalar!(
        r#"SELECT least(
               (SELECT min(run_at) FROM jobs WHERE status = 'queued'),
               (SELECT min(locked_until) FROM jobs WHERE status = 'running')
           ) AS "due""#
    )
    .fetch_one(db)
    .await
}

/// Jobs waiting to run (queued, due or not).
pub async fn depth(db: &PgPool) -> sqlx::Result<i64> {
    let depth = sqlx::query_scalar!(r#"SELECT count(*) AS "depth!" FROM jobs WHERE status = 'queued'"#)
        .fetch_one(db)
        .await?;
    Ok(depth)
}

/// A dead job, or a queued one whose last attempt failed: what `keel jobs list` shows.
#[derive(Debug)]
pub struct FailedJob {
    pub id: JobId,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_error: Option<String>,
}

pub async fn list_failed(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<FailedJob>> {
    sqlx::query_as!(
        FailedJob,
        "SELECT id, kind, status, attempts, max_attempts, run_at, updated_at, last_error
         FROM jobs
         WHERE status = 'dead' OR (status = 'queued' AND last_error IS NOT NULL)
         ORDER BY status = 'dead' DESC, updated_at DESC
         LIMIT $1",
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Queues a dead or failing job to run now with a fresh set of attempts. `false` when there
/// is no such job (or it is running).
pub async fn retry(conn: &mut PgConnection, id: JobId) -> sqlx::Result<bool> {
    let updated = sqlx::query!(
        "UPDATE jobs
         SET status = 'queued', attempts = 0, run_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('dead', 'queued')",
        id,
    )
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Deletes dead jobs not touched for `older_than`.
pub async fn purge_dead(db: &PgPool, older_than: Duration) -> sqlx::Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM jobs WHERE status = 'dead' AND updated_at < now() - make_interval(secs => $1)",
        older_than.as_secs_f64(),
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

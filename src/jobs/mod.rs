//! Durable background jobs in PostgreSQL, and the scheduler that enqueues periodic work.
//!
//! A job is a value of a type implementing [`Job`], stored as JSON in the `jobs` table by
//! [`enqueue`] inside the caller's transaction: it exists exactly when the change that caused
//! it committed. A [`Worker`] claims jobs under a lease (`FOR UPDATE SKIP LOCKED`), renews the
//! lease while the job runs, deletes the job when it succeeds, and on failure queues it again
//! after an exponential backoff with jitter, until `MAX_ATTEMPTS` make it dead (kept, with its
//! last error, for `keel jobs list` / `keel jobs retry`). A worker killed mid-job loses
//! nothing: its lease runs out and another worker runs the job again. So every job runs at
//! least once and should be idempotent; side effects that must happen once (an email) record
//! that they happened in the same transaction as their effect.
//!
//! Written here rather than taken from a crate: graphile_worker (the one candidate on our sqlx)
//! leaves a crashed worker's jobs locked for four hours, and underway and sqlxmq pin sqlx 0.8.

mod kind;
mod queue;
mod schedule;
mod waker;
mod worker;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;

use crate::{
    accounts::{PurgeExpiredAuth, SendPasswordReset, export::ExportUserData},
    billing::{
        events::NotifyGraceEnded, reconcile::ReconcileSubscriptions, seats::SyncSeats, stripe::Stripe,
        webhooks::ProcessStripeEvent,
    },
    config::Config,
    mail::{DeliverEmail, Mailer, PurgeOldEmails},
};

pub use kind::JobKind;
pub use queue::{
    AfterFailure, ClaimedJob, EnqueueOptions, FailedJob, JobId, NOTIFY_CHANNEL, NOTIFY_OPT_OUT, NewJob,
    enqueue, enqueue_with, list_failed, purge_dead, retry,
};
pub use schedule::Schedule;
pub use waker::Waker;
pub use worker::{Backoff, Worker, WorkerConfig};

/// A kind of background work. The value is the job's payload (JSON in the table).
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// Stored in `jobs.kind`. keel's own jobs (and a fork's) name a [`JobKind`]
    /// (`JobKind::DeliverEmail.as_str()`), so the test below checks the worker registers them.
    const KIND: &'static str;
    /// Attempts before the job is dead.
    const MAX_ATTEMPTS: i32 = 10;
    /// An attempt still running after this long is stopped and counts as failed, so a hung job
    /// cannot hold a worker slot (and renew its lease) forever.
    const TIMEOUT: Duration = Duration::from_secs(600);

    fn run(self, context: JobContext) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A failure that no later attempt can fix (input that can never be read, say): a job whose
/// `run` returns it (as the error, or anywhere in its chain of context) is dead at once
/// instead of being retried `MAX_ATTEMPTS` times.
#[derive(Debug)]
pub struct Permanent(pub String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (permanent: not retried)", self.0)
    }
}

impl std::error::Error for Permanent {}

/// What a running job can reach.
#[derive(Clone)]
pub struct JobContext {
    pub db: PgPool,
    pub mailer: Mailer,
    /// `None` when billing is not configured (no `STRIPE_SECRET_KEY`).
    pub stripe: Option<Stripe>,
    /// The prices of `STRIPE_PRICES` sold per seat.
    pub per_seat_prices: Arc<[String]>,
    pub job_id: JobId,
    /// This run's attempt, from 1.
    pub attempt: i32,
}

type JobFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// How to run one kind of job.
struct Handler {
    run: Box<dyn Fn(serde_json::Value, JobContext) -> JobFuture + Send + Sync>,
    timeout: Duration,
}

/// The job kinds a worker can run.
#[derive(Default)]
pub struct Registry {
    handlers: std::collections::HashMap<&'static str, Handler>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<J: Job>(mut self) -> Self {
        let run = Box::new(|payload, context| -> JobFuture {
            Box::pin(async move {
                let job: J = serde_json::from_value(payload)
                    .map_err(|error| anyhow::anyhow!("the payload is not a {}: {error}", J::KIND))?;
                job.run(context).await
            })
        });
        self.handlers.insert(
            J::KIND,
            Handler {
                run,
                timeout: J::TIMEOUT,
            },
        );
        self
    }

    fn handler(&self, kind: &str) -> Option<&Handler> {
        self.handlers.get(kind)
    }

    /// The kinds this registry can run: a worker claims only these.
    fn kinds(&self) -> Vec<String> {
        self.handlers.keys().map(|kind| (*kind).to_owned()).collect()
    }
}

/// Every job kind keel itself defines: each [`JobKind`] (a test checks). Features add theirs here.
pub fn registry() -> Registry {
    Registry::new()
        .register::<PurgeDeadJobs>()
        .register::<DeliverEmail>()
        .register::<PurgeOldEmails>()
        .register::<SendPasswordReset>()
        .register::<PurgeExpiredAuth>()
        .register::<ExportUserData>()
        .register::<ProcessStripeEvent>()
        .register::<NotifyGraceEnded>()
        .register::<ReconcileSubscriptions>()
        .register::<SyncSeats>()
}

/// Periodic work keel itself runs. Features add theirs here.
pub fn schedule(config: &Config) -> Schedule {
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * HOUR.as_secs());
    let grace_period_days = config.grace_period_days;
    Schedule::new()
        .every("purge-dead-jobs", DAY, |_| PurgeDeadJobs { older_than_days: 30 })
        .every("purge-old-emails", DAY, |_| PurgeOldEmails {
            older_than_days: 30,
        })
        .every("purge-expired-auth", HOUR, |_| PurgeExpiredAuth)
        .every("notify-grace-ended", HOUR, move |_| NotifyGraceEnded {
            grace_period_days,
        })
        .every("reconcile-subscriptions", DAY, |_| ReconcileSubscriptions)
}

/// Deletes dead jobs nobody retried within `older_than_days`, so the table does not grow
/// without bound.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PurgeDeadJobs {
    pub older_than_days: u32,
}

impl Job for PurgeDeadJobs {
    const KIND: &'static str = JobKind::PurgeDeadJobs.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let days = Duration::from_secs(u64::from(self.older_than_days) * 24 * 3600);
        let purged = purge_dead(&context.db, days).await?;
        tracing::info!(purged, "purged dead jobs");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, path::Path};

    use super::*;

    /// The guard against a job enqueued that no worker claims (a worker claims only the kinds
    /// it registered): every kind keel defines is registered, the registry knows no other, and
    /// every scheduled job is of a registered kind.
    #[test]
    fn every_job_kind_is_registered_with_the_worker() {
        let registered: HashSet<String> = registry().kinds().into_iter().collect();
        let missing: Vec<&str> = JobKind::ALL
            .iter()
            .map(|kind| kind.as_str())
            .filter(|kind| !registered.contains(*kind))
            .collect();
        assert!(
            missing.is_empty(),
            "job kinds not registered in jobs::registry(): {missing:?}"
        );
        let listed: HashSet<&str> = JobKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(listed.len(), JobKind::ALL.len(), "two kinds share a name");
        let unlisted: Vec<&String> = registered
            .iter()
            .filter(|kind| !listed.contains(kind.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "registered kinds missing from JobKind: {unlisted:?}"
        );

        let config = Config::from_lookup(|_| None).expect("the development defaults");
        let scheduled = schedule(&config).kinds();
        assert!(!scheduled.is_empty());
        for kind in scheduled {
            assert!(
                registered.contains(kind),
                "scheduled job kind {kind} is not registered"
            );
        }
    }

    /// Every `Job` in the crate takes its `KIND` from [`JobKind`], so the test above sees it.
    #[test]
    fn every_job_type_names_a_listed_kind() {
        fn visit(dir: &Path, offenders: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    visit(&path, offenders);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    let source = std::fs::read_to_string(&path).unwrap();
                    for (number, line) in source.lines().enumerate() {
                        let defines_kind = line.trim_start().starts_with("const KIND") && line.contains('=');
                        if defines_kind && !line.contains("JobKind::") {
                            offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                        }
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut offenders);
        assert!(
            offenders.is_empty(),
            "a job kind spelled outside JobKind (add it there, and register the job):\n{}",
            offenders.join("\n")
        );
    }
}

//! The worker: claims jobs, runs them with bounded concurrency, renews their leases, records
//! outcomes, and runs the schedule. It sleeps on LISTEN until a job is added, a retry falls
//! due or a lease runs out, with a slow poll as a fallback.
//!
//! The queue's own statements (claim, renew, complete, fail) go through a small pool of their
//! own ([`queue_pool`]), configured for them; the jobs' work goes through the shared pool.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand::RngExt as _;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use time::OffsetDateTime;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{billing::stripe::Stripe, mail::Mailer};

use super::{
    Handler, JobContext, Permanent, Registry, Schedule,
    queue::{self, AfterFailure, ClaimedJob, NOTIFY_CHANNEL},
};

/// Exponential backoff with jitter: attempt n waits a random time between half and all of
/// `base · 2^(n-1)`, capped at `cap`. The jitter spreads out jobs that failed together.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.clamp(1, 31) as u32 - 1;
        let full = self
            .base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.cap);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Identifies this worker's leases (`jobs.locked_by`); unique per process.
    pub id: String,
    /// Jobs run at once by this worker.
    pub concurrency: usize,
    /// How long a claimed job stays reserved without a renewal. A worker that dies holds its
    /// jobs this long at most; a running job's lease is renewed every third of it.
    pub lease: Duration,
    /// Longest sleep without looking at the queue (in case a notification was missed).
    pub poll_interval: Duration,
    pub backoff: Backoff,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()),
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(5),
            backoff: Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(3600),
            },
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "keel".to_owned())
}

pub struct Worker {
    db: PgPool,
    /// Where `LISTEN` and the queue's pool connect: both need sessions of their own, which
    /// PgBouncer in transaction mode does not give (`DATABASE_DIRECT_URL`).
    direct: PgConnectOptions,
    mailer: Mailer,
    stripe: Option<Stripe>,
    per_seat_prices: Arc<[String]>,
    registry: Arc<Registry>,
    schedule: Schedule,
    config: Arc<WorkerConfig>,
}

impl Worker {
    pub fn new(
        db: PgPool,
        mailer: Mailer,
        registry: Registry,
        schedule: Schedule,
        config: WorkerConfig,
    ) -> Self {
        Self {
            direct: (*db.connect_options()).clone(),
            db,
            mailer,
            stripe: None,
            per_seat_prices: Arc::new([]),
            registry: Arc::new(registry),
            schedule,
            config: Arc::new(config),
        }
    }

    /// The Stripe client jobs reach through [`JobContext::stripe`] (none: billing is not
    /// configured), and the prices of `STRIPE_PRICES` sold per seat.
    pub fn with_stripe(mut self, stripe: Option<Stripe>, per_seat_prices: Vec<String>) -> Self {
        self.stripe = stripe;
        self.per_seat_prices = per_seat_prices.into();
        self
    }

    /// `LISTEN` and the queue's statements on connections made with `options`
    /// (`DATABASE_DIRECT_URL`) rather than the pool's.
    pub fn with_direct(mut self, options: PgConnectOptions) -> Self {
        self.direct = options;
        self
    }

    /// Runs until `shutdown`; then claims nothing more and waits for the running jobs.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            db,
            direct,
            mailer,
            stripe,
            per_seat_prices,
            registry,
            schedule,
            config,
        } = self;
        tracing::info!(
            worker = config.id,
            concurrency = config.concurrency,
            "job worker started"
        );
        let scheduler = (!schedule.is_empty())
            .then(|| tokio::spawn(run_schedule(schedule, db.clone(), shutdown.clone())));
        let queue_db = queue_pool(&db, &direct);

        // Waits on PostgreSQL race the shutdown or are bounded: a hung database must not keep
        // the process from stopping.
        let Some(mut listener) = unless_stopped(&shutdown, listen(&direct)).await else {
            return Ok(());
        };
        let kinds = registry.kinds();
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let mut depth_checked = None;
        let mut vacuum = Vacuum::default();
        let mut running = JoinSet::new();
        while !shutdown.is_cancelled() {
            // Take as many jobs as there are free slots.
            let free = slots.available_permits();
            if free > 0 {
                // Bounded rather than cut off by the shutdown: a claim dropped midway may
                // still commit, leaving its jobs leased (and an attempt spent) for nothing.
                let claim = queue::claim(&queue_db, &config.id, &kinds, free as i64, config.lease);
                match tokio::time::timeout(CLAIM_TIMEOUT, claim)
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut))
                {
                    Ok(jobs) => {
                        vacuum.after_claiming(jobs.len(), &queue_db);
                        // At most `free` jobs were claimed, so a permit is there for each.
                        for job in jobs {
                            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                                break;
                            };
                            let context = JobContext {
                                db: db.clone(),
                                mailer: mailer.clone(),
                                stripe: stripe.clone(),
                                per_seat_prices: Arc::clone(&per_seat_prices),
                                job_id: job.id,
                                attempt: job.attempts,
                            };
                            let run = execute(
                                context,
                                queue_db.clone(),
                                Arc::clone(&registry),
                                Arc::clone(&config),
                                job,
                                shutdown.clone(),
                            );
                            running.spawn(async move {
                                run.await;
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "claiming jobs failed; retrying"),
                }
            }
            // With every slot busy, only a finishing job (or the poll) can change anything.
            let sleep = if slots.available_permits() == 0 {
                config.poll_interval
            } else {
                let next_due = time_to_next_due(&queue_db, config.poll_interval, &mut depth_checked);
                let Some(sleep) = unless_stopped(&shutdown, next_due).await else {
                    break;
                };
                sleep
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                notified = recv(&mut listener) => {
                    if !notified {
                        // No working listener: try again after a pause, so as not to spin.
                        let pause = tokio::time::sleep(config.poll_interval.min(Duration::from_secs(1)));
                        let relisten = async { pause.await; listen(&direct).await };
                        let Some(relistened) = unless_stopped(&shutdown, relisten).await else { break };
                        listener = relistened;
                    }
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
        tracing::info!(
            running = running.len(),
            "job worker stopping; waiting for running jobs"
        );
        while running.join_next().await.is_some() {}
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        tracing::info!("job worker stopped");
        Ok(())
    }
}

/// The pool for the queue's own statements, beside `db` (the jobs'): two direct connections
/// (settings that last a session, which PgBouncer in transaction mode would not keep), each
/// opened with two settings that suit these statements and no others.
///
/// - `synchronous_commit = off`: a claim, a renewal, a completion or a failure commits without
///   waiting for its WAL flush. A crash of PostgreSQL can lose the last few of them, and a lost
///   one only makes a job run again, which at-least-once allows; a job's own writes go through
///   `db` and stay durable. WAL is flushed in order, so a job's durable commit also makes its
///   claim durable. Measured (`bench/jobs.sh`): the flush was most of a no-op job's cost.
/// - `enable_sort = off`: the claim must read `jobs_due` in index order and stop after a few
///   rows. Right after a flood, before autovacuum has analyzed the table, PostgreSQL believes
///   the queue nearly empty and plans a bitmap scan that reads every queued row and sorts
///   them: 10–20 ms per claim at 40,000 queued, against 0.2 ms through the index (pgbench,
///   claim and delete: 176 against 2,023 per second).
fn queue_pool(db: &PgPool, direct: &PgConnectOptions) -> PgPool {
    let options = direct
        .clone()
        .options([("synchronous_commit", "off"), ("enable_sort", "off")]);
    db.options()
        .clone()
        .max_connections(QUEUE_CONNECTIONS)
        .min_connections(0)
        .connect_lazy_with(options)
}

/// Connections of the queue's pool: its statements take well under a millisecond each.
const QUEUE_CONNECTIONS: u32 = 2;

/// Vacuums the `jobs` table every `VACUUM_EVERY` jobs this worker claims. Each claimed job
/// leaves two dead row versions (the claim's update, the delete) and a dead entry at the head
/// of `jobs_due`, which every later claim steps over until a vacuum removes it: through a
/// backlog of 18,000, claim and delete averaged 0.36 ms against 0.28 over 1,800, and a claim
/// alone took 0.42 ms at the end (pgbench). Autovacuum looks once a
/// minute, too late for a backlog drained in seconds. `SKIP_LOCKED`: when another worker's
/// vacuum is running, this one is skipped rather than queued behind it.
#[derive(Default)]
struct Vacuum {
    claimed_since: usize,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Vacuum {
    fn after_claiming(&mut self, claimed: usize, queue_db: &PgPool) {
        self.claimed_since += claimed;
        let busy = self.running.as_ref().is_some_and(|task| !task.is_finished());
        if self.claimed_since < VACUUM_EVERY || busy {
            return;
        }
        self.claimed_since = 0;
        let queue_db = queue_db.clone();
        self.running = Some(tokio::spawn(async move {
            if let Err(error) = sqlx::raw_sql("VACUUM (SKIP_LOCKED) jobs")
                .execute(&queue_db)
                .await
            {
                tracing::warn!(%error, "vacuuming the jobs table failed");
            }
        }));
    }
}

const VACUUM_EVERY: usize = 2000;

/// Pause between attempts to write a job's outcome while the database is away.
const OUTCOME_RETRY_EVERY: Duration = Duration::from_millis(500);

/// Longest wait for a claim; a hung database then does not stall the loop.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the queue-depth gauge is refreshed: counting a long backlog is not free.
const DEPTH_EVERY: Duration = Duration::from_secs(15);

/// How long to sleep: until the next retry or lease expiry, at most `poll_interval`. Also
/// marks dead the jobs abandoned on their last attempt, and now and then sets the
/// `keel_jobs_queued` gauge.
async fn time_to_next_due(
    db: &PgPool,
    poll_interval: Duration,
    depth_checked: &mut Option<Instant>,
) -> Duration {
    if let Err(error) = queue::bury_abandoned(db).await {
        tracing::warn!(%error, "marking abandoned jobs dead failed");
    }
    if depth_checked.is_none_or(|at| at.elapsed() >= DEPTH_EVERY) {
        *depth_checked = Some(Instant::now());
        match queue::depth(db).await {
            Ok(depth) => metrics::gauge!("keel_jobs_queued").set(depth as f64),
            Err(error) => tracing::warn!(%error, "counting queued jobs failed"),
        }
    }
    match queue::next_due(db).await {
        Ok(Some(due)) => {
            let wait = (due - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            // A little past the due time, so the claim finds it due.
            Duration::try_from(wait)
                .unwrap_or_default()
                .saturating_add(Duration::from_millis(5))
                .min(poll_interval)
        }
        Ok(None) => poll_interval,
        Err(_) => poll_interval,
    }
}

/// `future`'s output, or `None` once `shutdown` is cancelled.
async fn unless_stopped<T>(shutdown: &CancellationToken, future: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        output = future => Some(output),
        () = shutdown.cancelled() => None,
    }
}

async fn listen(options: &PgConnectOptions) -> Option<PgListener> {
    // The listener gets a one-connection pool of its own. From the shared pool, a connection
    // left LISTENing (the listener reconnects after a database restart) could go back to it,
    // and the next query on it would fail on a notification it does not expect ("unexpected
    // message: NotificationResponse": a 500, seen under load in
    // faults::webhooks_during_a_postgres_restart_get_503_and_none_acknowledged_is_lost).
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LISTENER_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = match PgListener::connect_with(&own).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "cannot LISTEN for new jobs; polling instead");
            return None;
        }
    };
    match listener.listen(NOTIFY_CHANNEL).await {
        Ok(()) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "cannot LISTEN for new jobs; polling instead");
            None
        }
    }
}

const LISTENER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits for a notification; `false` at once when there is no working listener.
async fn recv(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.try_recv().await.is_ok_and(|n| n.is_some()),
        None => false,
    }
}

/// Runs one claimed job to an outcome and records it.
async fn execute(
    context: JobContext,
    queue_db: PgPool,
    registry: Arc<Registry>,
    config: Arc<WorkerConfig>,
    job: ClaimedJob,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("job", id = job.id, kind = job.kind, attempt = job.attempts);
    async move {
        let started = Instant::now();
        let outcome = match registry.handler(&job.kind) {
            None => Err(anyhow::anyhow!(
                "no handler is registered for job kind `{}`",
                job.kind
            )),
            Some(handler) => run_leased(&queue_db, &config, &job, handler, context).await,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // The lease was renewed until the job ended, so it holds for a while yet: an outcome
        // that cannot be written now (PostgreSQL is away) is tried again until half a lease
        // has passed, rather than left for the lease to run out (a 60 s wait after every
        // outage, measured in faults::webhooks_and_jobs_across_a_postgres_outage). Past that,
        // the lease runs out and the job runs again. Once the worker is stopping, one try: a
        // retry would only hold up the exit (to the shutdown timeout when PostgreSQL is down,
        // faults::on_sigterm_with_postgres_down_a_job_whose_end_cannot_be_recorded_does_not_hold_up_the_exit),
        // and the job runs again after its lease either way.
        let give_up = Instant::now() + config.lease / 2;
        loop {
            match record_outcome(&queue_db, &config, &job, &outcome, elapsed_ms).await {
                Ok(()) => break,
                Err(error) if Instant::now() < give_up && !shutdown.is_cancelled() => {
                    tracing::warn!(%error, "recording the job's outcome failed; retrying");
                    // A pause the shutdown cuts short: then one last try.
                    let _ = unless_stopped(&shutdown, tokio::time::sleep(OUTCOME_RETRY_EVERY)).await;
                }
                Err(error) => {
                    tracing::error!(%error, "recording the job's outcome failed; it will run again");
                    break;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Runs the job in its own task (so a panic is a failed attempt, not a dead worker) while
/// renewing its lease, and stops it when it runs past its timeout or the lease is lost (then
/// another worker may already be running it).
async fn run_leased(
    db: &PgPool,
    config: &WorkerConfig,
    job: &ClaimedJob,
    handler: &Handler,
    context: JobContext,
) -> anyhow::Result<()> {
    let mut work = tokio::spawn((handler.run)(job.payload.clone(), context));
    let deadline = tokio::time::sleep(handler.timeout);
    tokio::pin!(deadline);
    let mut renew = tokio::time::interval(config.lease / 3);
    renew.tick().await;
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            joined = &mut work => {
                return joined.unwrap_or_else(|error| Err(anyhow::anyhow!("the job panicked: {error}")));
            }
            () = &mut deadline => {
                work.abort();
                anyhow::bail!("stopped after running for {} s (its timeout)", handler.timeout.as_secs());
            }
            _ = renew.tick() => {
                match queue::extend_lease(db, &config.id, job.id, config.lease).await {
                    Ok(true) => last_renewed = Instant::now(),
                    Ok(false) => {
                        work.abort();
                        anyhow::bail!("stopped: the lease was lost to another worker");
                    }
                    // A failed renewal is retried at the next tick, until the lease runs out.
                    Err(error) if last_renewed.elapsed() < config.lease => {
                        tracing::warn!(%error, "renewing the lease failed");
                    }
                    Err(error) => {
                        work.abort();
                        anyhow::bail!("stopped: the lease could not be renewed ({error})");
                    }
                }
            }
        }
    }
}

/// Writes a run's outcome to the queue, logs it and counts it (`keel_jobs_total`, exported at
/// `/metrics` once a recorder is installed; a no-op until then).
async fn record_outcome(
    db: &PgPool,
    config: &WorkerConfig,
    job: &ClaimedJob,
    outcome: &anyhow::Result<()>,
    elapsed_ms: u64,
) -> sqlx::Result<()> {
    let counted = match outcome {
        Ok(()) => {
            if queue::complete(db, job.id, &config.id).await? {
                tracing::info!(elapsed_ms, "job done");
            } else {
                tracing::warn!(
                    elapsed_ms,
                    "job done, but its lease had run out: it may run again"
                );
            }
            "done"
        }
        Err(error) => {
            let permanent = error.chain().any(|cause| cause.is::<Permanent>());
            let error = format!("{error:#}");
            let retry_in = config.backoff.delay(job.attempts);
            match queue::fail(db, job.id, &config.id, &error, retry_in, permanent).await? {
                AfterFailure::Retrying => {
                    let retry_in_ms = retry_in.as_millis() as u64;
                    tracing::warn!(elapsed_ms, error, retry_in_ms, "job failed; will retry");
                    "failed"
                }
                AfterFailure::Dead if permanent => {
                    tracing::error!(elapsed_ms, error, "job failed for good (not retried): dead");
                    "dead"
                }
                AfterFailure::Dead => {
                    let max_attempts = job.max_attempts;
                    tracing::error!(
                        elapsed_ms,
                        error,
                        max_attempts,
                        "job failed for the last time: dead"
                    );
                    "dead"
                }
                AfterFailure::LeaseLost => {
                    tracing::warn!(error, "job failed after its lease had run out");
                    "failed"
                }
            }
        }
    };
    metrics::counter!("keel_jobs_total", "kind" => job.kind.clone(), "outcome" => counted).increment(1);
    Ok(())
}

/// Enqueues scheduled work as periods begin, until `shutdown`.
async fn run_schedule(schedule: Schedule, db: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(schedule.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match unless_stopped(&shutdown, schedule.enqueue_due(&db)).await {
                    None => return,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(error = format!("{error:#}"), "enqueueing scheduled jobs failed");
                    }
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(
                first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
                "{first:?}"
            );
            let fourth = backoff.delay(4);
            assert!(
                fourth >= Duration::from_secs(8) && fourth <= Duration::from_secs(16),
                "{fourth:?}"
            );
            let late = backoff.delay(30);
            assert!(
                late >= Duration::from_secs(30) && late <= Duration::from_secs(60),
                "{late:?}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}

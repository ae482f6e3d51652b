//! Queue benchmark for `bench/jobs.sh`: what the job queue sustains on this machine.
//!
//! 1. Throughput: `--jobs` no-op jobs, each enqueued in its own transaction (as a request
//!    would) by 4 concurrent producers while one worker (default settings) runs them; jobs/s
//!    from the first enqueue to the last completion.
//! 2. Latency: `--samples` jobs enqueued one at a time, 20 ms apart, into an idle queue; the
//!    time from the enqueuing transaction's commit to the start of the job, p50/p90/p99/max.
//! 3. Backlog: the same worker drains a backlog committed in one transaction (a flood of
//!    webhook events, a worker back after an outage), once of `--backlog N` jobs and once of a
//!    tenth as many as the baseline: jobs/s for each and their ratio. A claim that costs in
//!    proportion to the backlog shows as a ratio well under 1.
//!
//! Usage: `jobs_bench DATABASE_URL [--jobs N] [--samples N] [--backlog N]` (the database must
//! exist).

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use keel::jobs::{self, Job, JobContext, Registry, Schedule, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Start times seen by the no-op job: (committed-at µs, started-at µs).
static STARTS: OnceLock<Mutex<Vec<(u128, u128)>>> = OnceLock::new();

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

#[derive(Serialize, Deserialize)]
struct Noop {
    /// When the producer was about to commit (µs since the epoch); 0 in the throughput run.
    committed_at: u128,
}

impl Job for Noop {
    const KIND: &'static str = "bench.noop";

    async fn run(self, _: JobContext) -> anyhow::Result<()> {
        let started = now_micros();
        if let Some(starts) = STARTS.get() {
            starts
                .lock()
                .expect("starts lock")
                .push((self.committed_at, started));
        }
        Ok(())
    }
}

fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("a value after the flag")?
            .parse()
            .context(name.to_owned()),
        None => Ok(default),
    }
}

async fn enqueue_one(pool: &PgPool, committed_at: impl Fn() -> u128) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    jobs::enqueue(
        &mut tx,
        &Noop {
            committed_at: committed_at(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn remaining(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await?)
}

/// Commits `count` no-op jobs in one statement, then waits for the worker to run them all:
/// jobs/s from the commit to the start of the last one (each job notes when it starts, so how
/// often the bench looks does not matter, and it looks seldom: counting a long backlog is
/// not free).
async fn drain(pool: &PgPool, count: usize) -> anyhow::Result<f64> {
    let starts = STARTS.get().context("starts")?;
    starts.lock().expect("lock").clear();
    let payload = jobs::NewJob::of(&Noop { committed_at: 0 })?;
    sqlx::query(
        "INSERT INTO jobs (kind, payload, max_attempts)
         SELECT $1, $2, $3 FROM generate_series(1, $4)",
    )
    .bind(payload.kind)
    .bind(&payload.payload)
    .bind(payload.max_attempts)
    .bind(count as i64)
    .execute(pool)
    .await?;
    let committed = now_micros();
    while remaining(pool).await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let starts = starts.lock().expect("lock");
    anyhow::ensure!(starts.len() == count, "{} of {count} jobs recorded", starts.len());
    let last = starts
        .iter()
        .map(|(_, started)| *started)
        .max()
        .unwrap_or(committed);
    Ok(count as f64 / (last.saturating_sub(committed) as f64 / 1e6))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .context("usage: jobs_bench DATABASE_URL [--jobs N] [--samples N] [--backlog N]")?;
    let total = arg(&args, "--jobs", 5000)?;
    let samples = arg(&args, "--samples", 200)?;
    let backlog = arg(&args, "--backlog", 20_000)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    keel::db::MIGRATOR.run(&pool).await?;
    STARTS.get_or_init(|| Mutex::new(Vec::new()));

    let config = WorkerConfig::default();
    let concurrency = config.concurrency;
    let shutdown = CancellationToken::new();
    let mailer = keel::mail::Mailer::new("bench <bench@localhost>", None)?;
    let worker = Worker::new(
        pool.clone(),
        mailer,
        Registry::new().register::<Noop>(),
        Schedule::new(),
        config,
    );
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. Throughput.
    let started = Instant::now();
    let producers = 4;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..producers {
        let (pool, next) = (pool.clone(), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                enqueue_one(&pool, || 0).await?;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let enqueued_in = started.elapsed();
    while remaining(&pool).await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {total} jobs enqueued (one transaction each, {producers} producers) and run \
         (1 worker, concurrency {concurrency}) in {:.2} s: {:.0} jobs/s (enqueue alone: {:.0} jobs/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / enqueued_in.as_secs_f64(),
    );

    // 2. Latency from commit to start, one job at a time.
    STARTS.get().context("starts")?.lock().expect("lock").clear();
    for _ in 0..samples {
        enqueue_one(&pool, now_micros).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while remaining(&pool).await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<f64> = STARTS
        .get()
        .context("starts")?
        .lock()
        .expect("lock")
        .iter()
        .map(|(committed, started)| started.saturating_sub(*committed) as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    anyhow::ensure!(
        latencies.len() == samples,
        "{} of {samples} jobs recorded",
        latencies.len()
    );
    println!(
        "latency commit -> start over {samples} jobs: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );

    // 3. Backlog.
    let small = (backlog / 10).max(1);
    let baseline = drain(&pool, small).await?;
    let flooded = drain(&pool, backlog).await?;
    println!(
        "backlog drain: {small} jobs at {baseline:.0} jobs/s (baseline), {backlog} jobs at \
         {flooded:.0} jobs/s: ratio {:.2}",
        flooded / baseline,
    );

    shutdown.cancel();
    worker.await??;
    Ok(())
}

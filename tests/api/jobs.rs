//! The job queue against real PostgreSQL: transactional enqueue, retries with backoff, the
//! dead state and `keel jobs`, a worker killed with SIGKILL mid-job, two worker processes
//! sharing a queue, and scheduled work across instances.
//!
//! Worker processes are this test binary run again with `--ignored --exact jobs::worker_process`
//! and `KEEL_TEST_WORKER_DB` set: a real separate process running the test job kinds below.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keel::{
    jobs::{self, Backoff, Job, JobContext, Registry, Schedule, Worker, WorkerConfig},
    mail::Mailer,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{ChildGuard, DatabaseGuard, migrated_database, run_keel_async, wait_until};

/// Records that it ran (with its attempt and the worker process) in `test_job_runs`.
#[derive(Serialize, Deserialize)]
struct Record {
    label: String,
}

impl Job for Record {
    const KIND: &'static str = "test.record";

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        record(&context, &self.label).await
    }
}

/// Fails (recording each attempt) until a row exists in `test_fixed`.
#[derive(Serialize, Deserialize)]
struct FailsUntilFixed;

impl Job for FailsUntilFixed {
    const KIND: &'static str = "test.fails_until_fixed";
    const MAX_ATTEMPTS: i32 = 4;

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        record(&context, "attempt").await?;
        let fixed: i64 = sqlx::query_scalar("SELECT count(*) FROM test_fixed")
            .fetch_one(&context.db)
            .await?;
        anyhow::ensure!(fixed > 0, "boom on attempt {}", context.attempt);
        Ok(())
    }
}

/// Hangs forever on its first attempt (so the worker can be killed mid-job); later attempts
/// finish.
#[derive(Serialize, Deserialize)]
struct HangsOnce;

impl Job for HangsOnce {
    const KIND: &'static str = "test.hangs_once";

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        record(&context, "started").await?;
        if context.attempt == 1 {
            std::future::pending::<()>().await;
        }
        record(&context, "finished").await
    }
}

/// Hangs on its first attempt, which its short timeout stops; later attempts finish.
#[derive(Serialize, Deserialize)]
struct HangsOnceBriefly;

impl Job for HangsOnceBriefly {
    const KIND: &'static str = "test.hangs_once_briefly";
    const TIMEOUT: Duration = Duration::from_millis(300);

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        HangsOnce.run(context).await
    }
}

async fn record(context: &JobContext, label: &str) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO test_job_runs (label, job_id, attempt, pid) VALUES ($1, $2, $3, $4)")
        .bind(label)
        .bind(context.job_id)
        .bind(context.attempt)
        .bind(std::process::id() as i32)
        .execute(&context.db)
        .await?;
    Ok(())
}

fn registry() -> Registry {
    Registry::new()
        .register::<Record>()
        .register::<FailsUntilFixed>()
        .register::<HangsOnce>()
        .register::<HangsOnceBriefly>()
}

/// No job here sends email: the mailer writes to the log.
fn log_mailer() -> Mailer {
    Mailer::new("keel <noreply@localhost>", None).expect("a valid sender")
}

/// Short leases and backoffs, so failures and crashes resolve within a test.
fn fast_config() -> WorkerConfig {
    WorkerConfig {
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(500),
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        },
        ..WorkerConfig::default()
    }
}

/// A migrated database of its own, plus the tables the test jobs write to.
async fn queue_database() -> (DatabaseGuard, PgPool) {
    let (database, pool) = migrated_database().await;
    for statement in [
        "CREATE TABLE test_job_runs (label text NOT NULL, job_id bigint NOT NULL, attempt int NOT NULL,
                                     pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        "CREATE TABLE test_fixed (fixed boolean)",
    ] {
        sqlx::query(statement).execute(&pool).await.expect("test table");
    }
    (database, pool)
}

/// Runs an in-process worker until the returned token is cancelled.
fn start_worker(pool: &PgPool, schedule: Schedule) -> CancellationToken {
    start_worker_with(pool, schedule, fast_config())
}

fn start_worker_with(pool: &PgPool, schedule: Schedule, config: WorkerConfig) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let worker = Worker::new(pool.clone(), log_mailer(), registry(), schedule, config);
    tokio::spawn(worker.run(shutdown.clone()));
    shutdown
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Polls `sql` (a count) until it reaches `expected`, for at most `within`.
async fn wait_for_count(pool: &PgPool, sql: &'static str, expected: i64, within: Duration) {
    wait_until(sql, within, || async {
        let now = count(pool, sql).await;
        if now >= expected {
            Ok(())
        } else {
            Err(format!("{now}, expected {expected}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_job_exists_only_if_its_transaction_commits() {
    let (_database, pool) = queue_database().await;
    let mut tx = pool.begin().await.unwrap();
    jobs::enqueue(
        &mut tx,
        &Record {
            label: "rolled back".into(),
        },
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);

    let mut tx = pool.begin().await.unwrap();
    jobs::enqueue(
        &mut tx,
        &Record {
            label: "committed".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let _worker = start_worker(&pool, Schedule::new()).drop_guard();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs",
        1,
        Duration::from_secs(5),
    )
    .await;
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM test_job_runs")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(labels, ["committed"]);
    wait_for_count(&pool, "SELECT 1 - count(*) FROM jobs", 1, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_new_job_wakes_an_idle_worker_at_once() {
    let (_database, pool) = queue_database().await;
    // A poll so slow that only the notification can explain a quick start.
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(5),
        ..fast_config()
    };
    let _worker = start_worker_with(&pool, Schedule::new(), config).drop_guard();
    let mut conn = pool.acquire().await.unwrap();
    // A first job proves the worker past its start (on a busy machine that can take longer
    // than any fixed pause, and a job enqueued before its first claim would prove nothing).
    jobs::enqueue(
        &mut conn,
        &Record {
            label: "started".into(),
        },
    )
    .await
    .unwrap();
    let runs = "SELECT count(*) FROM test_job_runs";
    wait_for_count(&pool, runs, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // idle: sleeping on LISTEN
    let started = Instant::now();
    jobs::enqueue(&mut conn, &Record { label: "wake".into() })
        .await
        .unwrap();
    wait_for_count(&pool, runs, 2, Duration::from_secs(5)).await;
    // Far below the 5 s poll: the notification woke it.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}

/// The channel and the opt-out setting are spelled in Rust and in the trigger (SQL): a rename
/// that changed only one side would leave workers polling, or webhook ingest notifying.
#[tokio::test]
async fn the_trigger_notifies_on_the_channel_workers_listen_to_unless_opted_out() {
    let (_database, pool) = queue_database().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen(jobs::NOTIFY_CHANNEL).await.unwrap();

    let mut quiet = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config($1, 'off', true)")
        .bind(jobs::NOTIFY_OPT_OUT)
        .execute(&mut *quiet)
        .await
        .unwrap();
    jobs::enqueue(
        &mut quiet,
        &Record {
            label: "quiet".into(),
        },
    )
    .await
    .unwrap();
    quiet.commit().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(heard.is_err(), "opted out, yet notified: {heard:?}");

    let mut conn = pool.acquire().await.unwrap();
    jobs::enqueue(&mut conn, &Record { label: "loud".into() })
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
    assert_eq!(
        heard.expect("no notification").unwrap().channel(),
        jobs::NOTIFY_CHANNEL
    );
}

#[tokio::test]
async fn a_failing_job_backs_off_goes_dead_and_can_be_revived_with_keel_jobs_retry() {
    let (database, pool) = queue_database().await;
    let mut conn = pool.acquire().await.unwrap();
    let id = jobs::enqueue(&mut conn, &FailsUntilFixed).await.unwrap();
    let worker = start_worker(&pool, Schedule::new());

    wait_for_count(
        &pool,
        "SELECT count(*) FROM jobs WHERE status = 'dead'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let times: Vec<time::OffsetDateTime> = sqlx::query_scalar("SELECT at FROM test_job_runs ORDER BY at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(times.len(), FailsUntilFixed::MAX_ATTEMPTS as usize);
    let gaps: Vec<time::Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff 100 ms · 2^(n-1), jittered to 50–100 %: 50–100, 100–200, 200–400 ms.
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    assert!(gaps[0] >= time::Duration::milliseconds(45), "{gaps:?}");

    let failed = jobs::list_failed(&mut conn, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].id, failed[0].status.as_str(), failed[0].attempts),
        (id, "dead", 4)
    );
    assert_eq!(failed[0].last_error.as_deref(), Some("boom on attempt 4"));
    worker.cancel();

    // The operator sees it, fixes the cause, and revives it from the command line.
    let (code, listing) = keel_jobs(&database, &["list"]).await;
    assert_eq!(code, 0);
    assert!(
        listing.contains(&format!("{id}\ttest.fails_until_fixed\tdead\tattempts 4/4")),
        "{listing}"
    );
    assert!(listing.contains("boom on attempt 4"), "{listing}");

    sqlx::query("INSERT INTO test_fixed VALUES (true)")
        .execute(&pool)
        .await
        .unwrap();
    let (code, said) = keel_jobs(&database, &["retry", &id.to_string()]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains(&format!("job {id} queued to run now")), "{said}");

    let _worker = start_worker(&pool, Schedule::new()).drop_guard();
    wait_for_count(&pool, "SELECT 1 - count(*) FROM jobs", 1, Duration::from_secs(5)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM test_job_runs").await, 5);
    // Retrying a job that is gone says so.
    assert!(!jobs::retry(&mut conn, id).await.unwrap());
}

#[tokio::test]
async fn an_attempt_that_hangs_is_stopped_at_its_timeout_and_retried() {
    let (_database, pool) = queue_database().await;
    let mut conn = pool.acquire().await.unwrap();
    jobs::enqueue(&mut conn, &HangsOnceBriefly).await.unwrap();
    let _worker = start_worker(&pool, Schedule::new()).drop_guard();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs WHERE label = 'finished'",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_cut_off_then_finished(&pool).await;
}

#[tokio::test]
async fn a_worker_leaves_alone_the_kinds_it_cannot_run() {
    let (_database, pool) = queue_database().await;
    // Written by a newer version, say, that this worker does not know yet.
    sqlx::query("INSERT INTO jobs (kind, payload, max_attempts) VALUES ('from.the.future', '{}', 3)")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    jobs::enqueue(
        &mut conn,
        &Record {
            label: "known".into(),
        },
    )
    .await
    .unwrap();
    let _worker = start_worker(&pool, Schedule::new()).drop_guard();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs",
        1,
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await; // past a poll
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM jobs WHERE kind = 'from.the.future'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("queued", 0));
}

/// What a claim takes, and in what order: jobs whose worker died (lease run out, attempts
/// left) first, oldest lease first; then due queued jobs by `run_at`, then by id. Not taken:
/// a lease still held, a job not yet due, a job abandoned on its last attempt (marked dead).
/// One slot, so the runs' order is the claims' order.
#[tokio::test]
async fn a_worker_takes_abandoned_jobs_first_then_due_jobs_in_order() {
    let (_database, pool) = queue_database().await;
    for (label, status, attempts, run_at, locked_until) in [
        ("due-b", "queued", 0, "-2 s", None),
        ("abandoned-2", "running", 1, "-1 min", Some("-1 s")),
        ("due-a", "queued", 0, "-3 s", None),
        ("held", "running", 1, "-1 min", Some("+1 min")),
        ("due-c1", "queued", 0, "-1 s", None),
        ("abandoned-on-its-last", "running", 3, "-1 min", Some("-3 s")),
        ("later", "queued", 0, "+1 hour", None),
        ("due-c2", "queued", 0, "-1 s", None),
        ("abandoned-1", "running", 1, "-1 min", Some("-2 s")),
    ] {
        // One fixed instant for the two `due-c`s, so their order is the ids'.
        sqlx::query(
            "INSERT INTO jobs (kind, payload, max_attempts, status, attempts, run_at, locked_until, locked_by)
             VALUES ('test.record', jsonb_build_object('label', $1::text), 3, $2, $3,
                     date_trunc('second', now()) + $4::interval, now() + $5::interval,
                     CASE WHEN $5 IS NOT NULL THEN 'a-dead-worker' END)",
        )
        .bind(label)
        .bind(status)
        .bind(attempts)
        .bind(run_at)
        .bind(locked_until)
        .execute(&pool)
        .await
        .unwrap();
    }
    let config = WorkerConfig {
        concurrency: 1,
        ..fast_config()
    };
    let _worker = start_worker_with(&pool, Schedule::new(), config).drop_guard();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs",
        6,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await; // past a poll: nothing else runs
    let runs: Vec<(String, i32)> = sqlx::query_as("SELECT label, attempt FROM test_job_runs ORDER BY at")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected = [
        ("abandoned-1", 2),
        ("abandoned-2", 2),
        ("due-a", 1),
        ("due-b", 1),
        ("due-c1", 1),
        ("due-c2", 1),
    ];
    assert_eq!(runs, expected.map(|(label, attempt)| (label.to_owned(), attempt)));
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT payload->>'label', status FROM jobs ORDER BY payload->>'label'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let left_expected = [
        ("abandoned-on-its-last", "dead"),
        ("held", "running"),
        ("later", "queued"),
    ];
    assert_eq!(
        left,
        left_expected.map(|(label, status)| (label.to_owned(), status.to_owned()))
    );
}

/// A job that hangs once ran twice: the first attempt cut off, the second finished.
async fn assert_cut_off_then_finished(pool: &PgPool) {
    let runs: Vec<(String, i32)> = sqlx::query_as("SELECT label, attempt FROM test_job_runs ORDER BY at")
        .fetch_all(pool)
        .await
        .unwrap();
    let expected = [("started", 1), ("started", 2), ("finished", 2)].map(|(l, a)| (l.to_owned(), a));
    assert_eq!(runs, expected);
}

/// `keel jobs ARGS…` against `database`.
async fn keel_jobs(database: &DatabaseGuard, args: &[&str]) -> (i32, String) {
    let args: Vec<&str> = ["jobs"].into_iter().chain(args.iter().copied()).collect();
    run_keel_async(
        &args,
        vec![
            ("DATABASE_URL", database.url()),
            ("LOG_FORMAT", "json".to_owned()),
        ],
    )
    .await
}

/// This test binary, run again as a worker process on `database`.
fn spawn_worker_process(database: &DatabaseGuard) -> ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "jobs::worker_process", "--nocapture"])
        .env("KEEL_TEST_WORKER_DB", database.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a worker process");
    ChildGuard(child)
}

/// Not a test: the entry point of the worker processes the tests above start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the jobs tests"]
async fn worker_process() {
    let url = std::env::var("KEEL_TEST_WORKER_DB").expect("KEEL_TEST_WORKER_DB names the database");
    let pool = PgPool::connect(&url).await.expect("connect");
    Worker::new(pool, log_mailer(), registry(), Schedule::new(), fast_config())
        .run(CancellationToken::new())
        .await
        .expect("worker runs");
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_nothing() {
    let (database, pool) = queue_database().await;
    let mut conn = pool.acquire().await.unwrap();
    let id = jobs::enqueue(&mut conn, &HangsOnce).await.unwrap();

    let mut doomed = spawn_worker_process(&database);
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs WHERE label = 'started'",
        1,
        Duration::from_secs(15),
    )
    .await;
    doomed.0.kill().unwrap(); // SIGKILL: no chance to clean up
    doomed.0.wait().unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "running", "the dead worker still holds the lease");

    let _survivor = spawn_worker_process(&database);
    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs WHERE label = 'finished'",
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_cut_off_then_finished(&pool).await;
    wait_for_count(&pool, "SELECT 1 - count(*) FROM jobs", 1, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn two_worker_processes_run_each_of_200_jobs_exactly_once() {
    let (database, pool) = queue_database().await;
    let _first = spawn_worker_process(&database);
    let _second = spawn_worker_process(&database);
    let mut tx = pool.begin().await.unwrap();
    for i in 0..200 {
        jobs::enqueue(
            &mut tx,
            &Record {
                label: format!("job-{i}"),
            },
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    wait_for_count(
        &pool,
        "SELECT count(*) FROM test_job_runs",
        200,
        Duration::from_secs(30),
    )
    .await;
    wait_for_count(&pool, "SELECT 1 - count(*) FROM jobs", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate would show up by now
    let (runs, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT label) FROM test_job_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((runs, distinct), (200, 200));
    let by_process: Vec<(i32, i64)> =
        sqlx::query_as("SELECT pid, count(*) FROM test_job_runs GROUP BY pid ORDER BY pid")
            .fetch_all(&pool)
            .await
            .unwrap();
    eprintln!("jobs per worker process: {by_process:?}");
    assert!(
        by_process
            .iter()
            .all(|(pid, _)| *pid != std::process::id() as i32),
        "only the worker processes ran jobs"
    );
}

#[tokio::test]
async fn scheduled_work_runs_once_per_period_across_instances() {
    let (_database, pool) = queue_database().await;
    let schedule = || {
        Schedule::new().every("tick", Duration::from_secs(1), |start| Record {
            label: start.unix_timestamp().to_string(),
        })
    };
    // Two instances, each with its own pool, as two processes would have.
    let other_pool = PgPool::connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let first = start_worker(&pool, schedule());
    let second = start_worker(&other_pool, schedule());
    tokio::time::sleep(Duration::from_millis(3300)).await;
    first.cancel();
    second.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let periods: Vec<(String, i64)> =
        sqlx::query_as("SELECT label, count(*) FROM test_job_runs GROUP BY label ORDER BY label")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        (3..=5).contains(&periods.len()),
        "one entry per period that began: {periods:?}"
    );
    assert!(
        periods.iter().all(|(_, runs)| *runs == 1),
        "each period ran once: {periods:?}"
    );
    let seconds: Vec<i64> = periods.iter().map(|(p, _)| p.parse().unwrap()).collect();
    assert!(
        seconds.windows(2).all(|w| w[1] - w[0] == 1),
        "consecutive periods: {seconds:?}"
    );
}

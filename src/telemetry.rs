//! Logging and metrics. Logging: one `tracing` subscriber for the process, human-readable in
//! development and JSON lines in production, written to stdout; `RUST_LOG` overrides the
//! default filter. Metrics: one Prometheus recorder for the process ([`metrics`]).
//!
//! Lines go into one shared in-memory buffer; a writer thread writes it out every
//! `FLUSH_INTERVAL`, or at once for WARN and ERROR lines. So the access-log line of a request
//! costs a copy, not a `write(2)` or a wake-up of another thread, and no request thread ever
//! waits on stdout: if stdout stalls until `MAX_PENDING` bytes wait, further lines are dropped
//! (and counted in a line written when it drains). Measured with `bench/` on `/` (CPU time per
//! request): a synchronous stdout writer cost ~6 µs, a channel to a writer thread
//! (tracing-appender) ~4.7 µs, mostly waking that thread for each line; this buffer costs what
//! formatting the line costs. The price: on `kill -9`, up to `FLUSH_INTERVAL` of INFO lines is
//! lost.

use std::{
    io::{self, Stdout, Write},
    sync::{
        Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{Level, Metadata};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter, prelude::*};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,tower_http=warn,sqlx=warn";

/// How long an INFO line may wait in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer before the interval is up.
const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes beyond which lines are dropped rather than held (stdout has stalled).
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// Lines waiting to be written. Request threads hold `pending` only to copy a line in; the
/// writer thread swaps the pending bytes out and writes them under `output`.
struct LogBuffer {
    pending: Mutex<Vec<u8>>,
    /// Wakes the writer thread early (a WARN or ERROR line, or a full buffer).
    wake: Condvar,
    /// Stdout and a spare buffer to swap with `pending`. Its lock also keeps chunks in order.
    output: Mutex<(Stdout, Vec<u8>)>,
    dropped: AtomicU64,
}

static LOG_BUFFER: LazyLock<LogBuffer> = LazyLock::new(|| LogBuffer {
    pending: Mutex::new(Vec::with_capacity(2 * FLUSH_AT)),
    wake: Condvar::new(),
    output: Mutex::new((io::stdout(), Vec::with_capacity(2 * FLUSH_AT))),
    dropped: AtomicU64::new(0),
});

/// A panic while a lock is held leaves at worst a partial line: keep logging.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogBuffer {
    fn append(&self, line: &[u8], urgent: bool) {
        let mut pending = lock(&self.pending);
        if pending.len() + line.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.extend_from_slice(line);
        if urgent || pending.len() >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Writes out what is pending (the writer thread, and `FlushOnDrop` at exit).
    fn flush(&self) -> io::Result<()> {
        let mut output = lock(&self.output);
        let (stdout, spare) = &mut *output;
        std::mem::swap(&mut *lock(&self.pending), spare);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            writeln!(
                stdout,
                r#"{{"level":"WARN","message":"{dropped} log lines dropped: stdout was not keeping up"}}"#
            )?;
        }
        let written = stdout.write_all(spare).and_then(|()| stdout.flush());
        spare.clear();
        written
    }

    /// The writer thread: sleeps until woken or `FLUSH_INTERVAL` passes, then writes.
    fn write_forever(&self) {
        loop {
            let pending = lock(&self.pending);
            if pending.is_empty() {
                let (pending, _) = self
                    .wake
                    .wait_timeout(pending, FLUSH_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(pending);
            } else {
                drop(pending);
            }
            let _ = self.flush();
        }
    }
}

/// Writes every line that is still buffered when dropped (at the end of `main`).
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        let _ = LOG_BUFFER.flush();
    }
}

/// Installs the global subscriber. Keep the returned guard until the process ends. Returns
/// `None` when a subscriber is already installed (tests), which is then kept.
pub fn init(format: LogFormat) -> Option<FlushOnDrop> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_target(false).with_writer(BufferedStdout))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(BufferedStdout),
            )
            .try_init(),
    };
    installed.ok()?;
    std::thread::Builder::new()
        .name("keel-log-writer".into())
        .spawn(|| LOG_BUFFER.write_forever())
        .ok()?;
    Some(FlushOnDrop)
}

/// Hands the fmt layer a writer per event, marking WARN and ERROR lines urgent.
struct BufferedStdout;

struct EventWriter {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    /// The fmt layer hands over each formatted line in one call: lines never interleave.
    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        LOG_BUFFER.append(line, self.urgent);
        Ok(())
    }

    /// Nothing to do: the writer thread writes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Upper bounds (seconds) of the request-latency histogram buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets. The recorder keeps every sample
/// until then, so this bounds its memory (measured: without it, 47 MiB after a few million
/// requests with no scrape).
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's Prometheus recorder, installed on first use; `/metrics` renders it. Every
/// `metrics::counter!`/`histogram!`/`gauge!` in keel records into it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| unreachable!("the bucket list is not empty"));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

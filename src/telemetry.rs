//! Logging: one `tracing` subscriber for the process, human-readable in development and JSON
//! lines in production, written to stdout. `RUST_LOG` overrides the default filter.
//!
//! Lines go into one shared in-memory buffer; a background thread writes it out every
//! `FLUSH_INTERVAL`, and WARN and ERROR lines are written at once. So the access-log line of
//! a request costs a copy, not a `write(2)` or a wake-up of another thread. Measured with
//! `bench/` on `/` (CPU time per request): a synchronous stdout writer cost ~6 µs, a
//! channel to a writer thread (tracing-appender) ~4.7 µs, mostly waking that thread for each
//! line; this buffer costs what formatting the line costs. The price: on `kill -9`, up to
//! `FLUSH_INTERVAL` of INFO lines is lost.

use std::{
    io::{self, Stdout, Write},
    sync::{LazyLock, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tracing::{Level, Metadata};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter, prelude::*};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,tower_http=warn,sqlx=warn";

/// How long an INFO line may wait in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered bytes that trigger a write before the interval is up.
const FLUSH_AT: usize = 64 * 1024;

/// Lines waiting to be written. Request threads hold `pending` only to copy a line in; the
/// write to stdout happens under `output`, after the pending bytes were swapped out, so a
/// slow stdout never blocks a request that is logging.
struct LogBuffer {
    pending: Mutex<Vec<u8>>,
    /// Stdout and a spare buffer to swap with `pending`. Its lock also keeps chunks in order.
    output: Mutex<(Stdout, Vec<u8>)>,
}

static LOG_BUFFER: LazyLock<LogBuffer> = LazyLock::new(|| LogBuffer {
    pending: Mutex::new(Vec::with_capacity(2 * FLUSH_AT)),
    output: Mutex::new((io::stdout(), Vec::with_capacity(2 * FLUSH_AT))),
});

/// A panic while a lock is held leaves at worst a partial line: keep logging.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogBuffer {
    fn append(&self, line: &[u8], flush_now: bool) -> io::Result<()> {
        let buffered = {
            let mut pending = lock(&self.pending);
            pending.extend_from_slice(line);
            pending.len()
        };
        if flush_now || buffered >= FLUSH_AT {
            self.flush()
        } else {
            Ok(())
        }
    }

    fn flush(&self) -> io::Result<()> {
        let mut output = lock(&self.output);
        let (stdout, spare) = &mut *output;
        std::mem::swap(&mut *lock(&self.pending), spare);
        if spare.is_empty() {
            return Ok(());
        }
        let written = stdout.write_all(spare).and_then(|()| stdout.flush());
        spare.clear();
        written
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
        .name("keel-log-flush".into())
        .spawn(|| {
            loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let _ = LOG_BUFFER.flush();
            }
        })
        .ok()?;
    Some(FlushOnDrop)
}

/// Hands the fmt layer a writer per event, flushing at once for WARN and ERROR.
struct BufferedStdout;

struct EventWriter {
    flush: bool,
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter { flush: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            flush: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    /// The fmt layer hands over each formatted line in one call: lines never interleave.
    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        LOG_BUFFER.append(line, self.flush)
    }

    fn flush(&mut self) -> io::Result<()> {
        LOG_BUFFER.flush()
    }
}

//! Logging and metrics. Logging: one `tracing` subscriber for the process, human-readable in
//! development and tracing-subscriber's JSON lines in production, on stdout; `RUST_LOG`
//! overrides the default filter. Metrics: one Prometheus recorder for the process ([`metrics`]).
//!
//! Lines go to stdout through tracing-appender's non-blocking writer, not lossy: if stdout
//! stalls until its queue is full, logging waits rather than losing the lines that would
//! explain the stall. The queue is written out when the guard [`init`] returns is dropped.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, Layer, fmt, fmt::MakeWriter, prelude::*, registry::LookupSpan};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,tower_http=warn,sqlx=warn";

/// Installs the global subscriber. Keep the returned guard until the process ends: dropping it
/// writes out the lines still queued. Returns `None` when a subscriber is already installed
/// (tests), which is then kept.
pub fn init(format: LogFormat) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (stdout, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("keel-log-writer")
        .finish(std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_target(false).with_writer(stdout))
            .try_init(),
        LogFormat::Json => registry.with(json_lines(stdout)).try_init(),
    };
    installed.ok().map(|()| guard)
}

/// One JSON object per line: the event's fields at the top level, the current span's (the
/// request's method, route and request id) under `span`:
/// `{"timestamp":…,"level":"INFO","message":"served","status":200,…,"target":…,"span":{…,"name":"request"}}`.
pub fn json_lines<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
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

/// What tests of logging share.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what a fmt layer writes.
    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Captured, *};

    /// The shape the access log's readers rely on (tests/api/faults.rs, RUNBOOK.md's grep):
    /// an event's fields at the top level, the span's under `span`, escaping done right.
    #[test]
    fn json_lines_carry_the_event_at_the_top_and_the_span_under_span() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(json_lines(captured.clone()));
        let awkward = "a \"quoted\"\nline\twith \\ and \u{1} and é";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(status = 200_u64, "outside");
            let span = tracing::info_span!("request", method = "GET", route = "/x", request_id = awkward);
            span.in_scope(|| tracing::warn!(ok = true, ratio = f64::NAN, "served"));
        });
        let lines: Vec<serde_json::Value> = captured
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["status"], 200);
        assert!(lines[0].get("span").is_none());
        assert!(lines[0]["timestamp"].is_string());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["span"]["name"], "request");
        assert_eq!(lines[1]["span"]["route"], "/x");
        assert_eq!(lines[1]["span"]["request_id"], awkward);
    }
}

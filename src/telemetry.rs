//! Logging and metrics. Logging: one `tracing` subscriber for the process, human-readable in
//! development and JSON lines in production, on stdout; `RUST_LOG` overrides the default
//! filter. Metrics: one Prometheus recorder for the process ([`metrics`]).
//!
//! Lines go to stdout through tracing-appender's non-blocking writer, not lossy: if stdout
//! stalls until its queue is full, logging waits rather than losing the lines that would
//! explain the stall. The queue is written out when the guard [`init`] returns is dropped.
//!
//! The JSON lines are tracing-subscriber's JSON format, written by a formatter of ours
//! ([`JsonLines`]) because the library's costs half as many instructions again per `/`
//! request (docs/PERFORMANCE.md, "Issue 15"); a unit test checks that both write the same lines.

use std::{
    cell::RefCell,
    io,
    sync::OnceLock,
    time::{Duration, UNIX_EPOCH},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    fmt,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// async-stripe (`stripe`) warns on every failed attempt; keel's own retry loop logs each
/// Stripe failure once, with the operation and what happens next.
const DEFAULT_FILTER: &str = "info,tower_http=warn,sqlx=warn,stripe=error";

/// Lines waiting for stdout before logging waits (~0.4 s of a busy server's access log).
const QUEUED_LINES: usize = 16 * 1024;

/// Installs the global subscriber. Keep the returned guard until the process ends: dropping it
/// writes out the lines still queued. Returns `None` when a subscriber is already installed
/// (tests), which is then kept.
pub fn init(format: LogFormat) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (stdout, guard) = NonBlockingBuilder::default()
        .lossy(false)
        // The queue's slots are allocated up front: the default 128,000 cost 4 MiB of idle RSS.
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("keel-log-writer")
        .finish(BatchedStdout(io::BufWriter::with_capacity(
            64 * 1024,
            io::stdout(),
        )));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_target(false).with_writer(stdout))
            .try_init(),
        LogFormat::Json => registry.with(json_lines(stdout)).try_init(),
    };
    installed.ok().map(|()| guard)
}

/// How long the writer thread waits after writing a batch (see [`BatchedStdout`]).
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// Stdout as the writer thread sees it. The thread flushes each time its queue runs empty;
/// pausing there lets lines gather into the next batch, where otherwise nearly every line
/// would wake the thread again (a futex wake-up and a context switch per request). A
/// `kill -9` can then lose up to `BATCH_PAUSE` of lines; a normal stop loses none.
struct BatchedStdout(io::BufWriter<io::Stdout>);

impl io::Write for BatchedStdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        std::thread::sleep(BATCH_PAUSE);
        Ok(())
    }
}

/// One JSON object per line, keel's [`JsonLines`].
pub fn json_lines<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .fmt_fields(JsonMembers)
        .event_format(JsonLines)
        .with_writer(writer)
}

/// One JSON object per line, as tracing-subscriber's JSON format writes it with the event's
/// fields at the top level and the current span under `span`:
/// `{"timestamp":…,"level":"INFO","message":"served","status":200,…,"target":…,"span":{"method":…,"request_id":…,"route":…,"name":"request"}}`.
/// The library builds a `serde_json::Value` map for every span and parses it back for every
/// event; here a span's fields are written once as JSON members ([`JsonMembers`]) and copied.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        writer.write_str(r#"{"timestamp":""#)?;
        write_timestamp(&mut writer, std::time::SystemTime::now())?;
        write!(writer, r#"","level":"{}""#, meta.level())?;
        let mut fields = JsonEventFields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(r#","target":"#)?;
        write_json_str(&mut writer, meta.target())?;
        if let Some(span) = ctx.parent_span() {
            let extensions = span.extensions();
            let members = extensions
                .get::<FormattedFields<N>>()
                .map_or("", |fields| fields.as_str())
                .trim_start_matches([',', ' ']);
            writer.write_str(r#","span":{"#)?;
            if !members.is_empty() {
                writer.write_str(members)?;
                writer.write_char(',')?;
            }
            writer.write_str(r#""name":"#)?;
            write_json_str(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// `2026-12-03T10:24:08.123456Z` (UTC, microseconds), as tracing-subscriber's `SystemTime`
/// writes it. Each thread formats the date once per second and appends the microseconds.
fn write_timestamp(writer: &mut dyn std::fmt::Write, now: std::time::SystemTime) -> std::fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            use std::fmt::Write as _;
            let at = i64::try_from(second)
                .ok()
                .and_then(|second| time::OffsetDateTime::from_unix_timestamp(second).ok())
                .ok_or(std::fmt::Error)?;
            text.clear();
            write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            )?;
            *cached = second;
        }
        let mut fraction = *b".000000Z";
        let mut micros = since_epoch.subsec_micros();
        for digit in fraction[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        writer.write_str(text)?;
        writer.write_str(std::str::from_utf8(&fraction).map_err(|_| std::fmt::Error)?)
    })
}

/// A span's fields as JSON members, `,"name":value` each (a field recorded later is appended
/// after a space, which JSON allows), for [`JsonLines`] to copy into every line.
struct JsonMembers;

impl<'w> FormatFields<'w> for JsonMembers {
    /// The members are written into a buffer of the thread's first, then into the span's
    /// string at once, so that string is allocated once. (Re-entered, it writes directly.)
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> std::fmt::Result {
        thread_local! {
            static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let record = |writer: &mut Writer<'_>| {
            let mut members = JsonEventFields {
                writer,
                result: Ok(()),
            };
            fields.record(&mut members);
            members.result
        };
        BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => {
                buffer.clear();
                let written = record(&mut Writer::new(&mut *buffer)).and_then(|()| writer.write_str(&buffer));
                // A span with a huge field does not leave the thread holding its size.
                if buffer.capacity() > 4096 {
                    *buffer = String::new();
                }
                written
            }
            Err(_) => record(&mut writer),
        })
    }
}

/// Writes each field of an event (or a span) as `,"name":value`.
struct JsonEventFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl JsonEventFields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .writer
                .write_char(',')
                .and_then(|()| write_json_str(self.writer, field.name()))
                .and_then(|()| self.writer.write_char(':'))
                .and_then(|()| value(self.writer));
        }
    }
}

impl Visit for JsonEventFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |writer| write_json_str(writer, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.entry(field, |writer| {
            use std::fmt::Write as _;
            writer.write_char('"')?;
            write!(JsonEscaped(writer), "{value:?}")?;
            writer.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    /// JSON has no NaN or infinity: those are `null`, as serde_json writes them.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |writer| {
            if value.is_finite() {
                write!(writer, "{value}")
            } else {
                writer.write_str("null")
            }
        });
    }
}

/// `value` as a JSON string.
fn write_json_str(writer: &mut dyn std::fmt::Write, value: &str) -> std::fmt::Result {
    writer.write_char('"')?;
    write_escaped(writer, value)?;
    writer.write_char('"')
}

/// `value` escaped for the inside of a JSON string, as serde_json escapes it (`\"`, `\\`, the
/// short escapes, `\u00xx` for other control characters; nothing else). Nearly every string
/// logged (messages, routes, ids) has nothing to escape and is written as it is.
fn write_escaped(writer: &mut dyn std::fmt::Write, value: &str) -> std::fmt::Result {
    let bytes = value.as_bytes();
    if !needs_escaping(bytes) {
        return writer.write_str(value);
    }
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `at` is an ASCII byte, so a char boundary on both sides.
        writer.write_str(&value[plain_from..at])?;
        if short.is_empty() {
            write!(writer, "\\u{byte:04x}")?;
        } else {
            writer.write_str(short)?;
        }
        plain_from = at + 1;
    }
    writer.write_str(&value[plain_from..])
}

/// Whether JSON needs any of these bytes escaped: a control character, `"` or `\`. Eight
/// bytes at a time (the classic "has a byte less than n / equal to c" word tricks, exact for
/// whether any byte matches).
fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let any_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGH != 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        // A byte below 0x20 (valid for any bound up to 0x80), or equal to `"` or `\`.
        if word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0
            || any_zero(word ^ (ONES * u64::from(b'"')))
            || any_zero(word ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A `fmt::Write` that escapes what is written through it for the inside of a JSON string:
/// a `Debug` value is formatted straight into the line, not into a `String` first.
struct JsonEscaped<'a>(&'a mut dyn std::fmt::Write);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        write_escaped(self.0, text)
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

/// Lets a line that anyone on the internet can cause (a forged webhook signature) through
/// at most once per `period`, so a flood costs a few lines rather than the log volume:
/// [`Self::allow`] says whether to log and how many were held back since the last one.
pub struct Sampled {
    period: Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Sampled {
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back)` when this occurrence is to be logged, `None` to hold it back.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held_back) = &mut *state;
        if last.is_some_and(|last| now.duration_since(last) < self.period) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
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

    #[test]
    fn a_sampled_line_goes_out_once_a_period_and_counts_what_it_held_back() {
        let sampled = Sampled::new(Duration::from_millis(200));
        assert_eq!(sampled.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(sampled.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(sampled.allow(), Some(5));
        assert_eq!(sampled.allow(), None);
    }

    /// Events inside and outside spans, with fields of every kind and text that needs escaping.
    fn emit() {
        let awkward = "a \"quoted\"\nline\twith \\ and \u{1} and é";
        tracing::info!(status = 200_u64, latency_us = 12_u64, "served");
        let span = tracing::info_span!("request", method = "GET", route = "/x", request_id = awkward);
        span.in_scope(|| {
            tracing::warn!(
                ok = true,
                delta = -3_i64,
                ratio = 0.25_f64,
                text = awkward,
                "it is {}",
                awkward
            );
            let error = std::io::Error::other("disk \"full\"");
            tracing::error!(%error, debug = ?Some(1), "failed");
        });
        let empty = tracing::info_span!("empty");
        empty.in_scope(|| tracing::info!(not_a_number = f64::NAN, "inside a span without fields"));
    }

    /// A subscriber writing keel's JSON lines into `captured`.
    fn ours_into(captured: &Captured) -> impl tracing::Subscriber {
        tracing_subscriber::registry().with(json_lines(captured.clone()))
    }

    fn lines_of(captured: &Captured) -> Vec<serde_json::Value> {
        captured
            .text()
            .lines()
            .map(|line| {
                let mut value: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                value
                    .as_object_mut()
                    .unwrap()
                    .remove("timestamp")
                    .expect("a timestamp");
                value
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(4096))]

        /// Any string, written whole or in pieces (as `Debug` output arrives), is the JSON
        /// string serde_json writes.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(
            text in proptest::string::string_regex("(?s).{0,80}").unwrap(),
            cut in 0usize..81,
        ) {
            let mut whole = String::new();
            write_json_str(&mut whole, &text).unwrap();
            proptest::prop_assert_eq!(&whole, &serde_json::to_string(&text).unwrap());
            let cut = (0..=cut.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let mut pieces = String::from("\"");
            {
                use std::fmt::Write as _;
                let mut escaped = JsonEscaped(&mut pieces);
                escaped.write_str(&text[..cut]).unwrap();
                escaped.write_str(&text[cut..]).unwrap();
            }
            pieces.push('"');
            proptest::prop_assert_eq!(&pieces, &whole);
        }
    }

    #[test]
    fn every_byte_that_json_escapes_is_found_at_every_position() {
        for position in 0..24 {
            for byte in 0u8..=0x7f {
                let mut bytes = vec![b'a'; 24];
                bytes[position] = byte;
                let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                assert_eq!(needs_escaping(&bytes), expected, "byte {byte:#x} at {position}");
            }
        }
        assert!(!needs_escaping("é, ü, 日本, emoji 🦀, all above 0x7f".as_bytes()));
    }

    /// A span field whose `Debug` logs while it is formatted: tracing drops what is logged
    /// from inside a dispatch (it does not reach the members' buffer), and the span keeps its
    /// fields whole.
    #[test]
    fn a_span_field_that_opens_a_span_while_formatted_is_written_whole() {
        struct OpensASpan;
        impl std::fmt::Debug for OpensASpan {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let inner = tracing::info_span!("inner", depth = 2_u64);
                inner.in_scope(|| tracing::info!("from inside Debug"));
                f.write_str("outer value")
            }
        }
        let ours = Captured::default();
        let subscriber = ours_into(&ours);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer", value = ?OpensASpan, n = 1_u64);
            outer.in_scope(|| tracing::info!("from outside"));
        });
        let lines = lines_of(&ours);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(lines[0]["message"], "from outside");
        assert_eq!(lines[0]["span"]["value"], "outer value");
        assert_eq!(lines[0]["span"]["n"], 1);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds_across_seconds() {
        let at = |seconds: u64, micros: u64| {
            let mut text = String::new();
            let when = UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros);
            write_timestamp(&mut text, when).unwrap();
            text
        };
        assert_eq!(at(1_796_293_448, 123_456), "2026-12-03T10:24:08.123456Z");
        assert_eq!(at(1_796_293_448, 7), "2026-12-03T10:24:08.000007Z");
        assert_eq!(at(1_796_293_449, 999_999), "2026-12-03T10:24:09.999999Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_796_293_448, 500_000), "2026-12-03T10:24:08.500000Z");
    }

    #[test]
    fn json_lines_say_what_the_libraries_json_format_says() {
        let ours = Captured::default();
        let subscriber = ours_into(&ours);
        tracing::subscriber::with_default(subscriber, emit);
        let reference = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(reference.clone()),
        );
        tracing::subscriber::with_default(subscriber, emit);

        let (ours, reference) = (lines_of(&ours), lines_of(&reference));
        assert_eq!(ours.len(), 4);
        assert_eq!(ours, reference);
        assert_eq!(
            ours[1]["span"]["request_id"],
            "a \"quoted\"\nline\twith \\ and \u{1} and é"
        );
        assert_eq!(ours[3]["not_a_number"], serde_json::Value::Null);
    }
}

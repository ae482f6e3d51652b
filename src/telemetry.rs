//! Logging: one `tracing` subscriber for the process, human-readable in development and JSON
//! lines in production. `RUST_LOG` overrides the default filter.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,tower_http=warn,sqlx=warn";

/// Installs the global subscriber. Called once by `main`; tests run without one (or with
/// their own) so a second call is harmless and ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    // Err only means a subscriber is already installed (tests); keep that one.
    let _ = result;
}

//! keel: a single-binary SaaS starter kit. `main.rs` is only the command line; everything else
//! lives here so the integration tests build the very same application.

/// Users, teams, sessions, email verification and password resets.
pub mod accounts;
/// The operator console's reads and actions (its pages are in `http::admin`).
pub mod admin;
/// Assembles the application (`App::build`) and runs it until shutdown.
pub mod app;
/// Stripe billing: webhooks, checkout, the portal, reconciliation and dunning.
pub mod billing;
/// The Redis connection.
pub mod cache;
/// Typed settings from the environment.
pub mod config;
/// The PostgreSQL pool and embedded migrations.
pub mod db;
/// Domain values with no I/O.
pub mod domain;
/// `AppError`, the one error type of request handling.
pub mod error;
/// Dependency health in the IETF health-check format.
pub mod health;
/// Routes, handlers and middleware.
pub mod http;
/// Durable background jobs and scheduled work.
pub mod jobs;
/// Outgoing email: templates, the outbox and SMTP delivery.
pub mod mail;
/// Logging setup.
pub mod telemetry;

/// The property tests' case count: `cases` by default (the suite's 2–3 s), or
/// `PROPTEST_CASES` for a long run (`PROPTEST_CASES=1000000 cargo nextest run properties`,
/// docs/RELIABILITY.md). A failure found is saved under `proptest-regressions/` and replayed
/// first on every later run: commit those files.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config {
        // Properties that discard some inputs (`prop_assume!`) keep the same share of
        // rejections allowed however many cases run.
        max_global_rejects: (cases / 2).max(1024),
        ..proptest::test_runner::Config::with_cases(cases)
    }
}

/// The product's name, on pages, in emails, in `/health` (`serviceId`), as the database
/// `application_name` and in the `EMAIL_FROM` default. It is the crate's name: Cargo.toml is
/// the one place it is set, and `scripts/rename.sh NEW_NAME` renames a fork everywhere else.
pub const NAME: &str = env!("CARGO_PKG_NAME");

pub use app::App;
pub use config::Config;

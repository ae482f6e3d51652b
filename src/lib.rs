//! keel: a single-binary SaaS starter kit. `main.rs` is only the command line; everything else
//! lives here so the integration tests build the very same application.

/// Users, teams, sessions, email verification and password resets.
pub mod accounts;
/// Assembles the application (`App::build`) and runs it until shutdown.
pub mod app;
/// Stripe billing: webhook signatures (more to come).
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

pub use app::App;
pub use config::Config;

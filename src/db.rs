//! The PostgreSQL pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::{
    PgPool, Postgres,
    migrate::{MigrateDatabase as _, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Config;

/// Every migration under `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request may wait for a pooled connection before it fails (and the page says
/// the database is unavailable) instead of queueing forever.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the pool. In development a missing database is created first, so `cargo run` works on
/// a fresh machine. Connections open lazily: the process starts even while PostgreSQL is down.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let url = config.database_url.expose_secret();
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    if !config.is_production()
        && !Postgres::database_exists(url)
            .await
            .context("connecting to PostgreSQL")?
    {
        Postgres::create_database(url)
            .await
            .context("creating the development database")?;
        tracing::info!(
            database = options.get_database().unwrap_or_default(),
            "created database"
        );
    }
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.application_name("keel")))
}

/// Applies pending migrations. sqlx takes a PostgreSQL advisory lock for the duration, so
/// several instances starting at once apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")?;
    Ok(())
}

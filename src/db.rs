//! The PostgreSQL pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::{
    Connection as _, PgPool, Postgres,
    migrate::{MigrateDatabase as _, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Config;

/// Every migration under `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request may wait for a pooled connection before it fails (and the page says
/// the database is unavailable) instead of queueing forever.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle for longer than this is pinged before it is handed out (see the
/// pool options in [`connect`]).
const RECHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Opens the pool. Connections open lazily, so the process starts even while PostgreSQL is
/// down; in development the first one is opened here, and a missing database is created, so
/// `cargo run` works on a fresh machine. That first connection stays in the pool for the
/// migrations: each new connection costs a round of authentication (and a TLS handshake when
/// the server offers TLS: ~90 ms measured against a local server).
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let url = config.database_url.expose_secret();
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let database = options.get_database().unwrap_or_default().to_owned();
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection when it goes back to the pool, and by default again
        // when it is taken out: a second round trip for every query. A connection used
        // within the last second was pinged on its return; only one idle for longer (when
        // the server may have restarted meanwhile) is checked before it is handed out.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > RECHECK_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options.application_name(crate::NAME));
    if !config.is_production() {
        match pool.acquire().await {
            Ok(_) => {}
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNKNOWN_DATABASE) => {
                Postgres::create_database(url)
                    .await
                    .context("creating the development database")?;
                tracing::info!(database, "created database");
            }
            Err(error) => return Err(error).context("connecting to PostgreSQL"),
        }
    }
    Ok(pool)
}

/// SQLSTATE `invalid_catalog_name`: the database named in the URL does not exist.
const UNKNOWN_DATABASE: &str = "3D000";

/// Applies pending migrations. sqlx takes a PostgreSQL advisory lock for the duration, so
/// several instances starting at once apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")?;
    Ok(())
}

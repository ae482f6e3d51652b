//! The PostgreSQL pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::{
    Connection as _, PgConnection, PgPool, Postgres,
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
    let options = connect_options(url, "DATABASE_URL")?;
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
        .connect_lazy_with(options);
    if !config.is_production() {
        match pool.acquire().await {
            Ok(_) => {}
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNKNOWN_DATABASE) => {
                match Postgres::create_database(direct_url(config)).await {
                    Ok(()) => tracing::info!(database, "created database"),
                    // Another instance starting at the same moment made it first.
                    Err(sqlx::Error::Database(error))
                        if error.code().as_deref() == Some(DUPLICATE_DATABASE) => {}
                    Err(error) => return Err(error).context("creating the development database"),
                }
            }
            Err(error) => return Err(error).context("connecting to PostgreSQL"),
        }
    }
    Ok(pool)
}

/// SQLSTATE `invalid_catalog_name`: the database named in the URL does not exist.
const UNKNOWN_DATABASE: &str = "3D000";
/// SQLSTATE `duplicate_database`.
const DUPLICATE_DATABASE: &str = "42P04";

/// `DATABASE_DIRECT_URL`, or `DATABASE_URL` when it is unset: a connection of a session's
/// own, for what PgBouncer in transaction mode cannot carry (SPEC "Scale-out").
fn direct_url(config: &Config) -> &str {
    config
        .database_direct_url
        .as_ref()
        .unwrap_or(&config.database_url)
        .expose_secret()
}

/// The options of the direct connection (see [`direct_url`]): the job workers' `LISTEN`.
pub fn direct_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let var = match config.database_direct_url {
        Some(_) => "DATABASE_DIRECT_URL",
        None => "DATABASE_URL",
    };
    connect_options(direct_url(config), var)
}

fn connect_options(url: &str, var: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("{var} is not a valid PostgreSQL URL"))?;
    Ok(options.application_name(crate::NAME))
}

/// Applies pending migrations on the direct connection. sqlx holds a session-level advisory
/// lock meanwhile (which a pooler in transaction mode would lose between statements), so
/// several instances starting at once apply each migration exactly once.
pub async fn migrate(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    let applied = match config.database_direct_url {
        None => MIGRATOR.run(pool).await,
        Some(_) => {
            let mut connection = PgConnection::connect_with(&direct_options(config)?)
                .await
                .context("connecting to DATABASE_DIRECT_URL")?;
            let applied = MIGRATOR.run(&mut connection).await;
            // Closing politely is a courtesy; the migrations' outcome is what counts.
            let _ = connection.close().await;
            applied
        }
    };
    applied.context("applying database migrations")
}

//! The application assembled in one place. `main` and the integration tests both call
//! [`App::build`], so what the tests exercise is what production runs.

use std::{future::IntoFuture as _, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::Cache,
    config::Config,
    db,
    health::HealthChecker,
    http::{
        self, AppState, Services,
        rate_limit::{self, Limiter},
    },
};

/// How long closing the pool may take at shutdown.
const DB_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A built application: database migrated, listener bound, routes ready.
pub struct App {
    listener: TcpListener,
    router: Router,
    limiter: Limiter,
    state: AppState,
}

impl App {
    /// Connects to PostgreSQL (creating the database in development) and applies pending
    /// migrations, prepares the (lazy) Redis connection, and binds `BIND_ADDR` (port 0 picks a
    /// free port: see [`App::port`]).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(&config).await?;
        db::migrate(&db).await?;
        let cache = Cache::connect(&config)?;
        let health = HealthChecker::new(db.clone(), cache.clone(), config.health_check_timeout);
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("binding BIND_ADDR {}", config.bind_addr))?;
        let state = AppState::new(Services {
            config,
            db,
            cache,
            health,
        });
        let (router, limiter) = http::router(state.clone())?;
        Ok(Self {
            listener,
            router,
            limiter,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| unreachable!("a bound listener has an address"))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish for at most
    /// the configured shutdown timeout.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let drain_timeout = self.state.config.shutdown_timeout;
        tokio::spawn(rate_limit::forget_quiet_clients(self.limiter, shutdown.clone()));

        let server = axum::serve(
            self.listener,
            self.router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tracing::info!(%addr, "listening on http://{addr}");

        tokio::select! {
            result = server.into_future() => result.context("serving HTTP")?,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!(timeout_secs = drain_timeout.as_secs(), "requests still running at the shutdown timeout; stopping anyway");
            }
        }
        // A hung database must not hold up the exit.
        if tokio::time::timeout(DB_CLOSE_TIMEOUT, self.state.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

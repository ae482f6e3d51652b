//! The application assembled in one place. `main` and the integration tests both call
//! [`App::build`], so what the tests exercise is what production runs.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use secrecy::ExposeSecret;

use crate::{
    accounts::Accounts,
    billing::{
        pricing::Catalog,
        signature::{self, Verifier},
        stripe::Stripe,
    },
    cache::Cache,
    config::Config,
    db,
    health::HealthChecker,
    http::{
        self, AppState, Services,
        csrf::CsrfKey,
        rate_limit::{self, Limiter},
        session::CookieNames,
    },
    jobs::{self, Worker, WorkerConfig},
    mail::Mailer,
};

/// The Stripe API client, when `STRIPE_SECRET_KEY` is set.
pub fn stripe_client(config: &Config) -> anyhow::Result<Option<Stripe>> {
    config
        .stripe
        .secret_key
        .clone()
        .map(|key| Stripe::new(key, config.stripe.api_base.clone()))
        .transpose()
        .context("setting up the Stripe client")
}

/// How long closing the pool may take at shutdown.
const DB_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A built application: database migrated, listener bound, routes ready, and a job worker
/// to run in the same process unless [`App::without_worker`] says otherwise.
pub struct App {
    listener: TcpListener,
    router: Router,
    limiters: Vec<Limiter>,
    state: AppState,
    worker: Option<Worker>,
}

impl App {
    /// Connects to PostgreSQL (creating the database in development) and applies pending
    /// migrations, prepares the (lazy) Redis connection, and binds `BIND_ADDR` (port 0 picks a
    /// free port: see [`App::port`]).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::telemetry::metrics();
        let db = db::connect(&config).await?;
        db::migrate(&config, &db).await?;
        let cache = Cache::connect(&config)?;
        let health = HealthChecker::new(db.clone(), cache.clone(), config.health_check_timeout);
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("binding BIND_ADDR {}", config.bind_addr))?;
        let mailer = Mailer::from_config(&config)?;
        let accounts = Accounts::new(db.clone(), mailer.clone(), cache.clone(), &config);
        let stripe = stripe_client(&config)?;
        let catalog = Catalog::new(config.stripe.prices.clone(), stripe.clone(), cache.clone());
        let state = AppState::new(Services {
            mailer: mailer.clone(),
            stripe: stripe.clone(),
            catalog,
            job_waker: jobs::Waker::start(db.clone()),
            csrf: CsrfKey::new(&config.secret_key),
            cookies: CookieNames::new(config.is_https()),
            webhooks: (!config.stripe.webhook_secrets.is_empty()).then(|| {
                Verifier::new(
                    config
                        .stripe
                        .webhook_secrets
                        .iter()
                        .map(ExposeSecret::expose_secret),
                    signature::DEFAULT_TOLERANCE,
                )
            }),
            config,
            db,
            cache,
            health,
            accounts,
        });
        let (router, limiters) = http::router(state.clone())?;
        let worker = Worker::new(
            state.db.clone(),
            mailer,
            jobs::registry(),
            jobs::schedule(&state.config),
            WorkerConfig::default(),
        )
        .with_stripe(stripe, state.config.stripe.per_seat_prices())
        .with_direct(db::direct_options(&state.config)?);
        Ok(Self {
            listener,
            router,
            limiters,
            state,
            worker: Some(worker),
        })
    }

    /// Serve HTTP only (`keel serve --no-worker`): jobs are left to `keel worker` processes.
    pub fn without_worker(mut self) -> Self {
        self.worker = None;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| unreachable!("a bound listener has an address"))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves (and runs jobs) until `shutdown` is cancelled, then lets in-flight requests and
    /// running jobs finish for at most the configured shutdown timeout.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let drain_timeout = self.state.config.shutdown_timeout;
        tokio::spawn(rate_limit::forget_quiet_clients(self.limiters, shutdown.clone()));
        let worker = self
            .worker
            .map(|worker| tokio::spawn(worker.run(shutdown.clone())));

        let max_connections = self.state.config.max_connections as usize;
        let server = http::serve::serve(self.listener, self.router, max_connections, shutdown.clone());
        tracing::info!(%addr, "listening on http://{addr}");

        let drained = async {
            server.await;
            if let Some(worker) = worker {
                worker.await.context("the job worker panicked")??;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            result = drained => result?,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(drain_timeout).await;
            } => {
                // Unfinished jobs are not lost: their leases run out and they run again.
                tracing::warn!(timeout_secs = drain_timeout.as_secs(), "requests or jobs still running at the shutdown timeout; stopping anyway");
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

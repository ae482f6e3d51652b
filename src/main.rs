//! The `keel` command line: parse, load configuration, call into the library.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keel::{App, Config, config::AppEnv, db, jobs, mail, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "keel", version, about = "A single-binary SaaS starter kit")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and run the job worker and scheduler (the default command).
    Serve {
        /// HTTP only: leave jobs to `keel worker` processes.
        #[arg(long)]
        no_worker: bool,
    },
    /// Run the job worker and scheduler only.
    Worker,
    /// Inspect and revive failed jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration, list every problem, exit 2 if it is unusable.
    CheckConfig,
    /// GET /health/live on BIND_ADDR: exit 0 if it answers 200, else 1 (container HEALTHCHECK).
    Healthcheck,
    /// Send a test email to ADDRESS now, through SMTP_URL, and report the outcome.
    SendTestEmail { address: String },
    /// Stripe events and subscriptions.
    Stripe {
        #[command(subcommand)]
        command: StripeCommand,
    },
    /// Who may open the operator console (/admin).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make the account with this address an operator (in production it also needs 2FA on).
    Grant { email: String },
    /// Take the operator flag away from the account with this address.
    Revoke { email: String },
}

#[derive(Subcommand)]
enum StripeCommand {
    /// Process a stored webhook event again, now (idempotent: state only moves forward and
    /// no email is sent twice).
    Replay {
        /// The event id (`evt_…`), as in the stripe_events table or Stripe's dashboard.
        event_id: String,
    },
    /// Compare every subscription with Stripe now, repair drift (each repair is written to
    /// billing_audit_log) and print a summary. The worker also does this daily.
    Reconcile,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List dead jobs and jobs whose last attempt failed, with their errors.
    List,
    /// Queue a dead or failing job to run now, with a fresh set of attempts.
    Retry {
        /// The job id `keel jobs list` shows.
        id: i64,
    },
}

const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = load_dotenv() {
        // Never the line itself: it may hold a secret.
        match error {
            dotenvy::Error::LineParse(_, position) => {
                eprintln!("error: .env: cannot parse the line at byte {position} (expected NAME=value)")
            }
            other => eprintln!("error: .env: {other}"),
        }
        return ExitCode::from(CONFIG_ERROR);
    }
    match cli.command.unwrap_or(Command::Serve { no_worker: false }) {
        Command::Healthcheck => healthcheck(),
        Command::CheckConfig => check_config(),
        Command::Serve { no_worker } => with_config(|config| run(serve(config, no_worker))),
        Command::Worker => with_config(|config| run(worker(config))),
        Command::Jobs { command } => with_config(|config| run(jobs_command(config, command))),
        Command::Migrate => with_config(|config| run(migrate(config))),
        Command::SendTestEmail { address } => with_config(|config| run(send_test_email(config, address))),
        Command::Stripe { command } => with_config(|config| run(stripe_command(config, command))),
        Command::Admin { command } => with_config(|config| run(admin_command(config, command))),
    }
}

/// `.env` is read in development only; production takes its settings from the environment.
fn load_dotenv() -> Result<(), dotenvy::Error> {
    if std::env::var("APP_ENV").as_deref() == Ok("production") {
        return Ok(());
    }
    match dotenvy::dotenv() {
        Err(error) if error.not_found() => Ok(()),
        other => other.map(drop),
    }
}

fn load_config() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|error| {
        for problem in &error.0 {
            eprintln!("error: {problem}");
        }
        ExitCode::from(CONFIG_ERROR)
    })
}

fn with_config(f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match load_config() {
        Ok(config) => {
            // Held until `main` returns, so buffered log lines are flushed at exit.
            let _log_guard = telemetry::init(config.log_format);
            for warning in config.warnings() {
                tracing::warn!("{warning}");
            }
            f(config)
        }
        Err(code) => code,
    }
}

fn check_config() -> ExitCode {
    match load_config() {
        Ok(config) => {
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            let env = match config.env {
                AppEnv::Development => "development",
                AppEnv::Production => "production",
            };
            println!("configuration OK ({env})");
            ExitCode::SUCCESS
        }
        Err(code) => {
            eprintln!("configuration is not usable: fix the variables above");
            code
        }
    }
}

fn run(future: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "keel stopped with an error");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, no_worker: bool) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    let app = if no_worker { app.without_worker() } else { app };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn worker(config: Config) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    db::migrate(&config, &pool).await?;
    let mailer = mail::Mailer::from_config(&config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let worker = jobs::Worker::new(
        pool,
        mailer,
        jobs::registry(),
        jobs::schedule(&config),
        jobs::WorkerConfig::default(),
    )
    .with_stripe(
        keel::app::stripe_client(&config)?,
        config.stripe.per_seat_prices(),
    )
    .with_direct(db::direct_options(&config)?);
    let drain_timeout = config.shutdown_timeout;
    tokio::select! {
        result = worker.run(shutdown.clone()) => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain_timeout).await } => {
            // Unfinished jobs are not lost: their leases run out and they run again.
            tracing::warn!(timeout_secs = drain_timeout.as_secs(), "jobs still running at the shutdown timeout; stopping anyway");
            Ok(())
        }
    }
}

/// Sends directly, not through the outbox: the operator wants the SMTP server's answer now.
async fn send_test_email(config: Config, address: String) -> anyhow::Result<()> {
    let mailer = mail::Mailer::from_config(&config)?;
    if config.smtp_url.is_none() {
        println!("SMTP_URL is not set: the email is written to the log instead of being sent");
    }
    let email = mail::SmtpTest {
        base_url: config.base_url.to_string(),
    };
    mailer.send_now(&address, &email).await?;
    println!("test email to {address} accepted");
    Ok(())
}

async fn admin_command(config: Config, command: AdminCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    let (email, operator) = match &command {
        AdminCommand::Grant { email } => (email, true),
        AdminCommand::Revoke { email } => (email, false),
    };
    if !keel::admin::set_operator(&pool, email, operator).await? {
        anyhow::bail!("no account has the address {email}");
    }
    match command {
        AdminCommand::Grant { .. } => println!("{email} is an operator"),
        AdminCommand::Revoke { .. } => println!("{email} is no longer an operator"),
    }
    Ok(())
}

async fn jobs_command(config: Config, command: JobsCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    let mut conn = pool.acquire().await?;
    match command {
        JobsCommand::List => {
            let failed = jobs::list_failed(&mut conn, 100).await?;
            if failed.is_empty() {
                println!("no dead or failing jobs");
            }
            for job in failed {
                let error = job
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("");
                println!(
                    "{id}\t{kind}\t{status}\tattempts {attempts}/{max}\tnext run {run_at}\t{error}",
                    id = job.id,
                    kind = job.kind,
                    status = job.status,
                    attempts = job.attempts,
                    max = job.max_attempts,
                    run_at = job.run_at,
                );
            }
            Ok(())
        }
        JobsCommand::Retry { id } => {
            if jobs::retry(&mut conn, id).await? {
                println!("job {id} queued to run now");
                Ok(())
            } else {
                anyhow::bail!("no dead or failing job {id} (see `keel jobs list`)")
            }
        }
    }
}

async fn stripe_command(config: Config, command: StripeCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    let mailer = mail::Mailer::from_config(&config)?;
    match command {
        StripeCommand::Replay { event_id } => {
            // Events of the other mode than the key's are not applied, as by the worker.
            let mode = keel::app::stripe_client(&config)?.and_then(|stripe| stripe.mode());
            let outcome = keel::billing::events::replay(&pool, &mailer, mode, &event_id).await?;
            println!("{event_id}: {outcome}");
            Ok(())
        }
        StripeCommand::Reconcile => {
            let stripe = keel::app::stripe_client(&config)?
                .context("STRIPE_SECRET_KEY is not set: there is no Stripe account to reconcile with")?;
            let per_seat = config.stripe.per_seat_prices();
            let summary = keel::billing::reconcile::reconcile(&pool, &stripe, &per_seat).await?;
            println!("{summary}");
            Ok(())
        }
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    db::migrate(&config, &pool).await?;
    println!("migrations applied ({} known)", db::MIGRATOR.iter().count());
    Ok(())
}

/// SIGTERM (docker stop, systemd) or Ctrl-C starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
    shutdown.cancel();
}

/// A plain HTTP/1.1 GET over a socket, so the container image needs no curl.
fn healthcheck() -> ExitCode {
    let raw = std::env::var("BIND_ADDR").unwrap_or_else(|_| keel::config::defaults::BIND_ADDR.to_owned());
    let Ok(mut addr) = raw.trim().parse::<SocketAddr>() else {
        eprintln!("error: BIND_ADDR: `{raw}` is not an address such as 0.0.0.0:8080");
        return ExitCode::from(CONFIG_ERROR);
    };
    // A wildcard bind is reached through loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    match get_status(addr, "/health/live") {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("unhealthy: /health/live answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("unhealthy: {addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head)?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

//! Typed settings read from the environment (the table in SPEC.md), validated in one pass.
//!
//! Every problem is collected, not just the first, so `keel check-config` can list all of them.
//! Secrets are `SecretString`/`SecretKey`: their `Debug` prints `[REDACTED]`, and no message
//! here ever quotes a secret's value.

use std::{fmt, net::SocketAddr, time::Duration};

use base64::Engine as _;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

use crate::domain::PlanName;

/// The development defaults of SPEC.md. Production refuses any of them.
pub mod defaults {
    pub const BIND_ADDR: &str = "127.0.0.1:3000";
    pub const BASE_URL: &str = "http://localhost:3000";
    pub const DATABASE_URL: &str = "postgres://postgres:postgres@localhost:5432/keel_dev";
    pub const DATABASE_MAX_CONNECTIONS: u32 = 10;
    pub const MAX_CONNECTIONS: u32 = 4096;
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
    pub const STRIPE_API_BASE: &str = "https://api.stripe.com";
    pub const EMAIL_FROM: &str = concat!(env!("CARGO_PKG_NAME"), " <noreply@localhost>");
    pub const RATE_LIMIT_PER_SECOND: u32 = 10;
    pub const RATE_LIMIT_BURST: u32 = 50;
    pub const AUTH_RATE_LIMIT_PER_MINUTE: u32 = 10;
    /// The `SECRET_KEY` written in `.env.example`: fine on a laptop, refused in production.
    pub const EXAMPLE_SECRET_KEY_PREFIX: &str = "dev0000000000000000";
}

/// `SECRET_KEY` must decode to at least this many bytes.
pub const MIN_SECRET_KEY_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The signing key for sessions, CSRF tokens and other server-side MACs.
pub struct SecretKey {
    bytes: SecretBox<[u8]>,
    /// True when no `SECRET_KEY` was given and one was generated for this process (development).
    pub generated: bool,
}

impl SecretKey {
    pub fn expose(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    /// A key for one purpose (CSRF tokens, sealed TOTP secrets…): HMAC-SHA256 of `purpose`
    /// under this key, so that no two purposes share a key.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(self.expose())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        hmac::Mac::update(&mut mac, purpose);
        hmac::Mac::finalize(mac).into_bytes().into()
    }

    #[cfg(test)]
    pub fn random_for_tests() -> Self {
        Self::random()
    }

    fn random() -> Self {
        let mut bytes = vec![0u8; MIN_SECRET_KEY_BYTES];
        rand::fill(&mut bytes[..]);
        Self {
            bytes: SecretBox::new(bytes.into_boxed_slice()),
            generated: true,
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

/// The absolute URL of `path` (with its query) on the site at `base_url` (`BASE_URL`), for
/// links that leave the site: emails, Stripe's return addresses.
pub fn absolute_url(base_url: &Url, path: &str) -> String {
    format!("{}{path}", base_url.as_str().trim_end_matches('/'))
}

/// One entry of `STRIPE_PRICES`: a plan name and the Stripe price it sells
/// (`team=price_456:per_seat` for a price per member of the team).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanPrice {
    pub plan: PlanName,
    pub price_id: String,
    /// Sold per seat: the subscription's quantity is the team's member count.
    pub per_seat: bool,
}

impl PlanPrice {
    /// `plan=price_id` or `plan=price_id:per_seat`.
    fn parse(entry: &str) -> Option<Self> {
        let (plan, price) = entry.split_once('=')?;
        let (price, per_seat) = match price.trim().split_once(':') {
            Some((price, "per_seat")) => (price, true),
            Some(_) => return None,
            None => (price.trim(), false),
        };
        if price.is_empty() || price.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            plan: PlanName::parse(plan.trim()).ok()?,
            price_id: price.to_owned(),
            per_seat,
        })
    }
}

#[derive(Debug)]
pub struct StripeConfig {
    /// Unset in development: the billing pages say billing is not configured.
    pub secret_key: Option<SecretString>,
    /// Several secrets are accepted at once so the webhook secret can be rotated without downtime.
    pub webhook_secrets: Vec<SecretString>,
    pub api_base: Url,
    pub prices: Vec<PlanPrice>,
}

impl StripeConfig {
    /// The prices sold per seat.
    pub fn per_seat_prices(&self) -> Vec<String> {
        (self.prices.iter())
            .filter(|price| price.per_seat)
            .map(|price| price.price_id.clone())
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    pub per_second: u32,
    pub burst: u32,
    pub auth_per_minute: u32,
}

#[derive(Debug)]
pub struct Config {
    pub env: AppEnv,
    pub bind_addr: SocketAddr,
    pub base_url: Url,
    pub database_url: SecretString,
    /// A direct (session) connection for migrations and `LISTEN`, when `DATABASE_URL` goes
    /// through PgBouncer in transaction mode.
    pub database_direct_url: Option<SecretString>,
    pub database_max_connections: u32,
    /// HTTP connections served at once; more wait in the accept queue.
    pub max_connections: u32,
    pub redis_url: SecretString,
    /// Prepended to every Redis key: lets several apps (or parallel tests) share one Redis.
    pub redis_key_prefix: String,
    pub secret_key: SecretKey,
    pub stripe: StripeConfig,
    pub smtp_url: Option<SecretString>,
    pub email_from: String,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics_token: Option<SecretString>,
    pub rate_limits: RateLimits,
    pub grace_period_days: u32,
    /// How long a team invitation's link works.
    pub invitation_ttl: Duration,
    pub log_format: LogFormat,
    /// Per-check timeout of `/health` (SPEC: 1 s).
    pub health_check_timeout: Duration,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Upper bound on handling one request.
    pub request_timeout: Duration,
}

/// One thing wrong with the configuration, naming the variable and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// `GRACE_PERIOD_DAYS` as a duration.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.grace_period_days) * 24 * 3600)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup: &lookup,
            problems: Vec::new(),
            env: AppEnv::Development,
        };
        r.env = match r.get("APP_ENV").as_deref() {
            None | Some("development") => AppEnv::Development,
            Some("production") => AppEnv::Production,
            Some(_) => {
                r.problem("APP_ENV", "must be `development` or `production`");
                AppEnv::Development
            }
        };
        let production = r.env == AppEnv::Production;

        let bind_addr = r.parsed(
            "BIND_ADDR",
            defaults::BIND_ADDR,
            "an address such as 0.0.0.0:8080",
        );
        let base_url = r.base_url();
        let database_url = r.secret_url(
            "DATABASE_URL",
            defaults::DATABASE_URL,
            &["postgres", "postgresql"],
        );
        let database_direct_url = r.database_direct_url();
        let database_max_connections =
            r.positive("DATABASE_MAX_CONNECTIONS", defaults::DATABASE_MAX_CONNECTIONS);
        let max_connections = r.positive("MAX_CONNECTIONS", defaults::MAX_CONNECTIONS);
        let redis_url = r.secret_url("REDIS_URL", defaults::REDIS_URL, &["redis", "rediss"]);
        let secret_key = r.secret_key();
        let stripe = StripeConfig {
            secret_key: r.stripe_secret_key(),
            webhook_secrets: r.webhook_secrets(),
            api_base: r.parsed("STRIPE_API_BASE", defaults::STRIPE_API_BASE, "an http(s) URL"),
            prices: r.prices(),
        };
        let smtp_url = r.smtp_url();
        let email_from = r.email_from();
        let trusted_proxies = r.trusted_proxies();
        let metrics_token = r.metrics_token();
        let rate_limits = RateLimits {
            per_second: r.positive("RATE_LIMIT_PER_SECOND", defaults::RATE_LIMIT_PER_SECOND),
            burst: r.positive("RATE_LIMIT_BURST", defaults::RATE_LIMIT_BURST),
            auth_per_minute: r.positive("AUTH_RATE_LIMIT_PER_MINUTE", defaults::AUTH_RATE_LIMIT_PER_MINUTE),
        };
        let grace_period_days = r.parsed("GRACE_PERIOD_DAYS", "7", "a whole number of days (0 or more)");
        let invitation_ttl_days = r.positive("INVITATION_TTL_DAYS", 7);
        let log_format = match r.get("LOG_FORMAT").as_deref() {
            None if production => LogFormat::Json,
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => {
                r.problem("LOG_FORMAT", "must be `pretty` or `json`");
                LogFormat::Pretty
            }
        };

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        Ok(Config {
            env: r.env,
            bind_addr,
            base_url,
            database_url,
            database_direct_url,
            database_max_connections,
            max_connections,
            redis_url,
            redis_key_prefix: "keel:".to_owned(),
            secret_key,
            stripe,
            smtp_url,
            email_from,
            trusted_proxies,
            metrics_token,
            rate_limits,
            grace_period_days,
            invitation_ttl: Duration::from_secs(u64::from(invitation_ttl_days) * 24 * 3600),
            log_format,
            health_check_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        })
    }

    pub fn is_production(&self) -> bool {
        self.env == AppEnv::Production
    }

    /// Cookies get `Secure` and responses get HSTS only when the site is served over https.
    pub fn is_https(&self) -> bool {
        self.base_url.scheme() == "https"
    }

    /// Things that work but that an operator should know about; printed at start and by
    /// `keel check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.secret_key.generated {
            warnings.push(
                "SECRET_KEY is not set: a random key was generated for this process, so forms opened before a restart need a reload (CSRF tokens derive from it)".to_owned(),
            );
        }
        if self.stripe.secret_key.is_none() {
            warnings.push("STRIPE_SECRET_KEY is not set: billing is not configured".to_owned());
        }
        if self.stripe.webhook_secrets.is_empty() {
            warnings.push("STRIPE_WEBHOOK_SECRET is not set: /webhooks/stripe answers 503".to_owned());
        }
        if self.stripe.prices.is_empty() {
            warnings.push("STRIPE_PRICES is empty: /pricing shows no plans".to_owned());
        }
        if self.smtp_url.is_none() {
            warnings.push("SMTP_URL is not set: emails are written to the log".to_owned());
        }
        warnings
    }
}

/// Reads one variable at a time, recording problems instead of stopping at the first.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
    env: AppEnv,
}

impl Reader<'_> {
    /// The variable's value; empty counts as unset (compose files often pass `VAR=`).
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    fn problem(&mut self, var: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            var,
            message: message.into(),
        });
    }

    fn production(&self) -> bool {
        self.env == AppEnv::Production
    }

    /// The value, or in production a "required" problem, or in development the default.
    fn required_in_production(&mut self, var: &'static str, default: &str, what: &str) -> String {
        match self.get(var) {
            Some(value) => {
                if self.production() && value == default {
                    self.problem(var, format!("is still the development default; set {what}"));
                }
                value
            }
            None => {
                if self.production() {
                    self.problem(var, format!("is required in production: set {what}"));
                }
                default.to_owned()
            }
        }
    }

    /// A non-secret value parsed with `FromStr`; the bad value may be quoted.
    fn parsed<T: std::str::FromStr>(&mut self, var: &'static str, default: &str, what: &str) -> T {
        let raw = self.get(var);
        let text = raw.as_deref().unwrap_or(default);
        match text.trim().parse() {
            Ok(value) => value,
            Err(_) => {
                self.problem(var, format!("`{text}` is not valid: expected {what}"));
                default
                    .parse()
                    .unwrap_or_else(|_| unreachable!("the default of {var} parses"))
            }
        }
    }

    fn positive(&mut self, var: &'static str, default: u32) -> u32 {
        let value: u32 = self.parsed(var, &default.to_string(), "a whole number of at least 1");
        if value == 0 {
            self.problem(var, "must be at least 1");
            return default;
        }
        value
    }

    fn base_url(&mut self) -> Url {
        let raw = self.required_in_production(
            "BASE_URL",
            defaults::BASE_URL,
            "the public https URL, e.g. https://app.example.com",
        );
        let fallback = || Url::parse(defaults::BASE_URL).unwrap_or_else(|_| unreachable!());
        match Url::parse(raw.trim()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host().is_none() => {
                self.problem("BASE_URL", format!("`{raw}` must be an http(s) URL with a host"));
                fallback()
            }
            Ok(url) => {
                let given = self.get("BASE_URL").is_some();
                if given && self.production() && url.scheme() != "https" {
                    self.problem("BASE_URL", "must be https in production");
                }
                url
            }
            Err(_) => {
                self.problem("BASE_URL", format!("`{raw}` is not a URL"));
                fallback()
            }
        }
    }

    /// A connection URL that may carry a password: checked, never quoted.
    fn secret_url(&mut self, var: &'static str, default: &str, schemes: &[&str]) -> SecretString {
        let raw = self.required_in_production(var, default, "the connection URL");
        match Url::parse(raw.trim()) {
            Ok(url) if schemes.contains(&url.scheme()) => {}
            _ => self.problem(var, format!("is not a valid URL: expected {}://…", schemes[0])),
        }
        SecretString::from(raw.trim().to_owned())
    }

    fn secret_key(&mut self) -> SecretKey {
        let Some(raw) = self.get("SECRET_KEY") else {
            if self.production() {
                self.problem(
                    "SECRET_KEY",
                    format!("is required in production: at least {MIN_SECRET_KEY_BYTES} random bytes, hex or base64 (e.g. `openssl rand -hex 64`)"),
                );
            }
            return SecretKey::random();
        };
        let raw = raw.trim();
        let decoded = hex::decode(raw)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(raw).ok())
            .or_else(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok());
        match decoded {
            None => self.problem("SECRET_KEY", "must be hex or base64 (e.g. `openssl rand -hex 64`)"),
            Some(bytes) if bytes.len() < MIN_SECRET_KEY_BYTES => self.problem(
                "SECRET_KEY",
                format!("decodes to {} bytes; at least {MIN_SECRET_KEY_BYTES} are required (e.g. `openssl rand -hex 64`)", bytes.len()),
            ),
            Some(bytes) => {
                let looks_made_up = raw.starts_with(defaults::EXAMPLE_SECRET_KEY_PREFIX)
                    || bytes.iter().all(|b| *b == bytes[0]);
                if self.production() && looks_made_up {
                    self.problem("SECRET_KEY", "is a development value; generate a random one (`openssl rand -hex 64`)");
                }
                return SecretKey {
                    bytes: SecretBox::new(bytes.into_boxed_slice()),
                    generated: false,
                };
            }
        }
        SecretKey::random()
    }

    fn stripe_secret_key(&mut self) -> Option<SecretString> {
        let Some(raw) = self.get("STRIPE_SECRET_KEY") else {
            if self.production() {
                self.problem(
                    "STRIPE_SECRET_KEY",
                    "is required in production: the secret (sk_…) or restricted (rk_…) API key",
                );
            }
            return None;
        };
        let raw = raw.trim();
        if !(raw.starts_with("sk_") || raw.starts_with("rk_")) {
            self.problem(
                "STRIPE_SECRET_KEY",
                "must be a Stripe secret (sk_…) or restricted (rk_…) key",
            );
        }
        Some(SecretString::from(raw.to_owned()))
    }

    fn webhook_secrets(&mut self) -> Vec<SecretString> {
        let Some(raw) = self.get("STRIPE_WEBHOOK_SECRET") else {
            if self.production() {
                self.problem("STRIPE_WEBHOOK_SECRET", "is required in production: the endpoint's signing secret (whsec_…); several may be comma-separated during rotation");
            }
            return Vec::new();
        };
        let secrets: Vec<&str> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if secrets.iter().any(|s| !s.starts_with("whsec_")) {
            self.problem(
                "STRIPE_WEBHOOK_SECRET",
                "every comma-separated secret must start with whsec_",
            );
        }
        secrets
            .into_iter()
            .map(|s| SecretString::from(s.to_owned()))
            .collect()
    }

    fn prices(&mut self) -> Vec<PlanPrice> {
        let Some(raw) = self.get("STRIPE_PRICES") else {
            return Vec::new();
        };
        let mut prices: Vec<PlanPrice> = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match PlanPrice::parse(entry) {
                Some(p) if prices.iter().any(|q| q.plan == p.plan) => {
                    self.problem("STRIPE_PRICES", format!("plan `{}` is listed twice", p.plan));
                }
                Some(p) => prices.push(p),
                None => self.problem(
                    "STRIPE_PRICES",
                    format!(
                        "`{entry}` is not `plan=price_id` or `plan=price_id:per_seat` (plan: lower-case letters, digits, - or _)"
                    ),
                ),
            }
        }
        prices
    }

    fn database_direct_url(&mut self) -> Option<SecretString> {
        let raw = self.get("DATABASE_DIRECT_URL")?;
        if !Url::parse(raw.trim()).is_ok_and(|url| matches!(url.scheme(), "postgres" | "postgresql")) {
            self.problem("DATABASE_DIRECT_URL", "is not a valid URL: expected postgres://…");
        }
        Some(SecretString::from(raw.trim().to_owned()))
    }

    fn smtp_url(&mut self) -> Option<SecretString> {
        let Some(raw) = self.get("SMTP_URL") else {
            if self.production() {
                self.problem("SMTP_URL", "is required in production (e.g. smtps://user:pass@smtp.example.com:465); without it no email is sent");
            }
            return None;
        };
        // lettre's own parser, so what passes here is what the mailer accepts.
        let valid = Url::parse(raw.trim()).is_ok_and(|url| matches!(url.scheme(), "smtp" | "smtps"))
            && lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(raw.trim()).is_ok();
        if !valid {
            self.problem(
                "SMTP_URL",
                "must be lettre's URL form: smtp://host:25, smtp://user:pass@host:587?tls=required or smtps://user:pass@host:465",
            );
        }
        Some(SecretString::from(raw.trim().to_owned()))
    }

    fn email_from(&mut self) -> String {
        let value = self.required_in_production(
            "EMAIL_FROM",
            defaults::EMAIL_FROM,
            "the sender, e.g. `Acme <hello@acme.com>`",
        );
        if value.parse::<lettre::message::Mailbox>().is_err() {
            self.problem(
                "EMAIL_FROM",
                format!("`{value}` is not an email address such as `Acme <hello@acme.com>`"),
            );
        }
        value
    }

    fn trusted_proxies(&mut self) -> Vec<IpNet> {
        let Some(raw) = self.get("TRUSTED_PROXIES") else {
            return Vec::new();
        };
        let mut nets = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // A bare address means just that host.
            let parsed = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.problem(
                    "TRUSTED_PROXIES",
                    format!("`{entry}` is not a CIDR such as 172.18.0.0/16"),
                ),
            }
        }
        nets
    }

    fn metrics_token(&mut self) -> Option<SecretString> {
        let raw = self.get("METRICS_TOKEN")?;
        if raw.trim().len() < 16 {
            self.problem(
                "METRICS_TOKEN",
                "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            );
        }
        Some(SecretString::from(raw.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const GOOD_KEY: &str = "7f3c9a1be04d5f6a8c2e1b7d9f0a3c5e7b9d1f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e";

    fn production_env() -> HashMap<&'static str, String> {
        [
            ("APP_ENV", "production"),
            ("BASE_URL", "https://app.example.com"),
            ("DATABASE_URL", "postgres://keel:hunter2-db@db:5432/keel"),
            ("REDIS_URL", "redis://redis:6379"),
            ("SECRET_KEY", GOOD_KEY),
            ("STRIPE_SECRET_KEY", "sk_live_hunter2stripe"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_old,whsec_new"),
            ("STRIPE_PRICES", "pro=price_123,team=price_456:per_seat"),
            ("SMTP_URL", "smtps://user:hunter2smtp@smtp.example.com:465"),
            ("EMAIL_FROM", "Acme <hello@acme.com>"),
            ("TRUSTED_PROXIES", "172.18.0.0/16, 10.0.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
    }

    fn load(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| env.get(k).cloned())
    }

    fn vars(err: ConfigError) -> Vec<&'static str> {
        err.0.into_iter().map(|p| p.var).collect()
    }

    #[test]
    fn development_needs_nothing() {
        let config = load(&HashMap::new()).expect("defaults are usable");
        assert_eq!(config.env, AppEnv::Development);
        assert_eq!(config.bind_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(config.rate_limits.burst, 50);
        assert_eq!(config.grace_period_days, 7);
        assert_eq!(config.invitation_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert!(config.secret_key.generated);
        assert_eq!(config.secret_key.expose().len(), MIN_SECRET_KEY_BYTES);
        assert!(!config.is_https());
    }

    #[test]
    fn a_complete_production_env_is_accepted() {
        let config = load(&production_env()).expect("complete production env");
        assert!(config.is_production());
        assert!(config.is_https());
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.stripe.webhook_secrets.len(), 2);
        assert_eq!(config.stripe.prices.len(), 2);
        assert_eq!(config.stripe.prices[1].plan.as_str(), "team");
        assert_eq!(config.stripe.prices[1].price_id, "price_456");
        assert!(config.stripe.prices[1].per_seat && !config.stripe.prices[0].per_seat);
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(!config.secret_key.generated);
    }

    #[test]
    fn production_names_every_missing_variable() {
        let required = [
            "BASE_URL",
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET",
            "SMTP_URL",
            "EMAIL_FROM",
        ];
        for var in required {
            let mut env = production_env();
            env.remove(var);
            let err = load(&env).expect_err(var);
            assert_eq!(vars(err), vec![var], "removing {var}");
        }
        let only_env: HashMap<_, _> = [("APP_ENV", "production".to_owned())].into();
        let mut missing = vars(load(&only_env).unwrap_err());
        missing.sort();
        let mut expected = required.to_vec();
        expected.sort();
        assert_eq!(missing, expected);
    }

    #[test]
    fn production_refuses_development_values() {
        for (var, value) in [
            ("DATABASE_URL", defaults::DATABASE_URL.to_owned()),
            ("BASE_URL", "http://app.example.com".to_owned()),
            (
                "SECRET_KEY",
                format!("{}{}", defaults::EXAMPLE_SECRET_KEY_PREFIX, "0".repeat(109)),
            ),
            ("SECRET_KEY", "ab".repeat(64)),
            ("SECRET_KEY", "ab".repeat(63)),
        ] {
            let mut env = production_env();
            env.insert(var, value);
            assert_eq!(vars(load(&env).unwrap_err()), vec![var]);
        }
    }

    #[test]
    fn messages_never_quote_a_secret() {
        let mut env = production_env();
        env.insert("DATABASE_URL", "mysql://root:hunter2-db@db/keel".to_owned());
        env.insert("SECRET_KEY", "hunter2-not-hex-nor-base64!".to_owned());
        env.insert("STRIPE_SECRET_KEY", "pk_hunter2stripe".to_owned());
        env.insert("SMTP_URL", "http://user:hunter2smtp@smtp".to_owned());
        env.insert("METRICS_TOKEN", "hunter2".to_owned());
        let err = load(&env).unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "a secret leaked: {text}");
        let debug = format!("{:?}", load(&production_env()).unwrap());
        assert!(!debug.contains("hunter2"), "a secret leaked in Debug: {debug}");
        assert!(!debug.contains(&GOOD_KEY[..16]));
    }

    #[test]
    fn bad_values_are_named() {
        let env: HashMap<_, _> = [
            ("APP_ENV", "staging"),
            ("BIND_ADDR", "localhost"),
            ("RATE_LIMIT_BURST", "0"),
            ("RATE_LIMIT_PER_SECOND", "many"),
            (
                "STRIPE_PRICES",
                "pro=price_1,Bad Plan=price_2,pro=price_3,team=price_4:per_user",
            ),
            ("TRUSTED_PROXIES", "10.0.0.0/8,nginx"),
            ("LOG_FORMAT", "xml"),
            ("GRACE_PERIOD_DAYS", "-1"),
            ("INVITATION_TTL_DAYS", "0"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_a,secret_b"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let mut got = vars(load(&env).unwrap_err());
        got.sort();
        assert_eq!(
            got,
            vec![
                "APP_ENV",
                "BIND_ADDR",
                "GRACE_PERIOD_DAYS",
                "INVITATION_TTL_DAYS",
                "LOG_FORMAT",
                "RATE_LIMIT_BURST",
                "RATE_LIMIT_PER_SECOND",
                "STRIPE_PRICES",
                "STRIPE_PRICES",
                "STRIPE_PRICES",
                "STRIPE_WEBHOOK_SECRET",
                "TRUSTED_PROXIES",
            ]
        );
    }

    #[test]
    fn the_example_secret_key_works_in_development_only() {
        let example = include_str!("../.env.example");
        let key = example
            .lines()
            .find_map(|line| line.strip_prefix("SECRET_KEY="))
            .expect(".env.example sets SECRET_KEY");
        let development: HashMap<_, _> = [("SECRET_KEY", key.to_owned())].into();
        assert!(!load(&development).unwrap().secret_key.generated);
        let mut production = production_env();
        production.insert("SECRET_KEY", key.to_owned());
        assert_eq!(vars(load(&production).unwrap_err()), vec!["SECRET_KEY"]);
    }

    #[test]
    fn secret_key_accepts_hex_and_base64() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8, 9].repeat(40));
        for key in [GOOD_KEY.to_owned(), b64] {
            let env: HashMap<_, _> = [("SECRET_KEY", key)].into();
            let config = load(&env).unwrap();
            assert!(config.secret_key.expose().len() >= MIN_SECRET_KEY_BYTES);
        }
    }
}

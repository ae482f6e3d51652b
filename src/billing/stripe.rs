//! Calls to Stripe's API: a small client over reqwest (rustls + ring), for the handful of
//! endpoints keel uses. Why not async-stripe: see README ("Stripe API client").
//!
//! Every call:
//! - goes to `STRIPE_API_BASE` with the pinned [`API_VERSION`], so the shapes keel reads do
//!   not change under it when the account's default version moves;
//! - has a deadline ([`Patience`]): a page waits at most ~2 s for Stripe, a background job
//!   longer;
//! - is retried with backoff while that deadline allows, on network errors, timeouts, 409,
//!   429 and 5xx (or as Stripe's `Stripe-Should-Retry` says). Only idempotent requests are
//!   sent at all: reads, and creates carrying an `Idempotency-Key` (every create does), so a
//!   retried create never makes a second object;
//! - passes a circuit breaker: after [`BREAKER_THRESHOLD`] consecutive failures that are
//!   Stripe's (not answering, 5xx), calls fail at once for [`BREAKER_COOLDOWN`], then one
//!   trial call decides whether it closes. A Stripe outage costs a page ~2 s once, then
//!   nothing.
//!
//! Responses are read leniently, like webhook events: only the fields keel uses.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, de::DeserializeOwned};
use url::Url;

use crate::config::absolute_url;

/// The API version keel's requests ask for (and its readers of responses are written for).
pub const API_VERSION: &str = "2025-03-31.basil";
/// Consecutive failures that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit refuses calls before one trial call is let through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(15);
/// Connecting to Stripe takes far less than this when it is up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a caller may wait for Stripe, retries included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// A person is waiting for a page: ~2 s in all.
    Interactive,
    /// A job or a command: a minute in all, each attempt up to 20 s.
    Background,
}

impl Patience {
    fn deadline(self) -> Duration {
        match self {
            Patience::Interactive => Duration::from_millis(1900),
            Patience::Background => Duration::from_secs(60),
        }
    }

    fn attempt_timeout(self) -> Duration {
        match self {
            Patience::Interactive => Duration::from_millis(1900),
            Patience::Background => Duration::from_secs(20),
        }
    }

    fn attempts(self) -> u32 {
        match self {
            Patience::Interactive => 3,
            Patience::Background => 5,
        }
    }

    /// The pause before retry `n` (1-based): 100 ms doubling (interactive) or 500 ms
    /// doubling (background), with up to 50 % random jitter so that many clients retrying
    /// together do not arrive together.
    fn backoff(self, n: u32) -> Duration {
        let base = match self {
            Patience::Interactive => Duration::from_millis(100),
            Patience::Background => Duration::from_millis(500),
        };
        let pause = base * 2u32.pow(n.saturating_sub(1).min(6));
        pause + pause.mul_f64(rand::random::<f64>() * 0.5)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("Stripe calls are paused after repeated failures (circuit open)")]
    CircuitOpen,
    #[error("Stripe did not answer in time")]
    Timeout,
    #[error("cannot reach Stripe: {0}")]
    Network(String),
    /// Stripe answered with an error.
    #[error("Stripe answered {status}: {kind}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        status: u16,
        kind: String,
        code: Option<String>,
        message: String,
    },
    #[error("Stripe's answer could not be read: {0}")]
    Decode(String),
}

impl StripeError {
    /// Stripe is down or unreachable (the caller shows "try again later"), rather than
    /// refusing what keel asked (a bug or a misconfiguration, e.g. an unknown price).
    pub fn is_outage(&self) -> bool {
        match self {
            StripeError::CircuitOpen | StripeError::Timeout | StripeError::Network(_) => true,
            StripeError::Api { status, .. } => *status >= 500,
            StripeError::Decode(_) => false,
        }
    }

    /// For `keel_stripe_requests_total{outcome}`.
    fn outcome(&self) -> &'static str {
        match self {
            StripeError::CircuitOpen => "circuit_open",
            StripeError::Timeout => "timeout",
            StripeError::Network(_) => "network",
            StripeError::Api { status, .. } if *status >= 500 => "server_error",
            StripeError::Api { .. } => "client_error",
            StripeError::Decode(_) => "decode_error",
        }
    }
}

/// The circuit breaker's state; pure, so its rules are tested with a clock of the test's own.
#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    /// Calls are refused until then. Once it has passed, one trial call is admitted and the
    /// circuit stays shut to others for the trial's length (a trial abandoned by its caller
    /// thus cannot keep the circuit half-open for ever).
    open_until: Option<Instant>,
}

impl Breaker {
    fn admit(&mut self, now: Instant, trial_length: Duration) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                self.open_until = Some(now + trial_length);
                true
            }
        }
    }

    /// Records an attempt's result; `true` when this opened (or re-opened) the circuit.
    fn record(&mut self, stripe_failed: bool, now: Instant) -> bool {
        if !stripe_failed {
            *self = Breaker::default();
            return false;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures >= BREAKER_THRESHOLD {
            self.open_until = Some(now + BREAKER_COOLDOWN);
            return true;
        }
        false
    }

    fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// A Stripe API client; cheap to clone (one connection pool, one breaker).
#[derive(Clone)]
pub struct Stripe(Arc<Inner>);

struct Inner {
    http: reqwest::Client,
    base: Url,
    secret_key: SecretString,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.0.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A request's body: Stripe's form encoding, nested keys spelled out (`line_items[0][price]`).
pub type Params<'a> = Vec<(&'a str, String)>;

impl Stripe {
    pub fn new(secret_key: SecretString, api_base: Url) -> anyhow::Result<Self> {
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::from_iter(
                    webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                ))
                .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self(Arc::new(Inner {
            http,
            base: api_base,
            secret_key,
            breaker: Mutex::new(Breaker::default()),
        })))
    }

    /// `GET path?query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        query: &Params<'_>,
        patience: Patience,
    ) -> Result<T, StripeError> {
        self.call(operation, Method::GET, path, query, None, patience)
            .await
    }

    /// `POST path` creating an object. `idempotency_key` makes retries (ours, and a caller's
    /// repeating the same logical request) return the first object instead of a second one.
    pub async fn create<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        params: &Params<'_>,
        idempotency_key: &str,
        patience: Patience,
    ) -> Result<T, StripeError> {
        self.call(
            operation,
            Method::POST,
            path,
            params,
            Some(idempotency_key),
            patience,
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        params: &Params<'_>,
        idempotency_key: Option<&str>,
        patience: Patience,
    ) -> Result<T, StripeError> {
        let request = Request {
            method,
            path,
            params,
            idempotency_key,
        };
        let started = Instant::now();
        let deadline = started + patience.deadline();
        let mut attempt = 1;
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = self
                .attempt(&request, remaining.min(patience.attempt_timeout()))
                .await;
            let retry = match &outcome {
                Ok(_) => false,
                Err(Attempt { retryable, .. }) => *retryable,
            };
            let pause = patience.backoff(attempt);
            if !retry || attempt >= patience.attempts() || Instant::now() + pause >= deadline {
                break outcome;
            }
            tracing::info!(operation, attempt, "Stripe call failed; retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        };
        let result = result.and_then(|body| {
            serde_json::from_slice(&body).map_err(|error| Attempt {
                error: StripeError::Decode(error.to_string()),
                retryable: false,
            })
        });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Attempt { error, .. }) => error.outcome(),
        };
        metrics::counter!("keel_stripe_requests_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("keel_stripe_request_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result.map_err(|failed| failed.error)
    }

    /// One HTTP exchange through the breaker; the body of a 2xx answer.
    async fn attempt(&self, request: &Request<'_>, timeout: Duration) -> Result<Vec<u8>, Attempt> {
        if !self.breaker(|b| b.admit(Instant::now(), timeout)) {
            return Err(Attempt {
                error: StripeError::CircuitOpen,
                retryable: false,
            });
        }
        let result = self.exchange(request, timeout).await;
        let stripe_failed = match &result {
            Ok(_) => false,
            Err(Attempt { error, .. }) => error.is_outage(),
        };
        if self.breaker(|b| b.record(stripe_failed, Instant::now())) {
            tracing::warn!(
                cooldown_secs = BREAKER_COOLDOWN.as_secs(),
                "Stripe keeps failing: circuit open, calls fail at once until a trial call succeeds"
            );
        }
        metrics::gauge!("keel_stripe_circuit_open").set(if self.breaker(|b| b.is_open()) {
            1.0
        } else {
            0.0
        });
        result
    }

    fn breaker<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut breaker = self
            .0
            .breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut breaker)
    }

    async fn exchange(&self, request: &Request<'_>, timeout: Duration) -> Result<Vec<u8>, Attempt> {
        let Request {
            method,
            path,
            params,
            idempotency_key,
        } = request;
        // Appended rather than joined, so that a base with a path (a proxy) keeps it.
        let url = absolute_url(&self.0.base, path);
        let mut request = self
            .0
            .http
            .request(method.clone(), url)
            .timeout(timeout)
            .bearer_auth(self.0.secret_key.expose_secret())
            .header("Stripe-Version", API_VERSION);
        request = if *method == Method::GET {
            request.query(params)
        } else {
            request.form(params)
        };
        if let Some(key) = *idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let should_retry = response
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let body = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let retryable = should_retry.unwrap_or(
            status == StatusCode::CONFLICT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error(),
        );
        Err(Attempt {
            error: api_error(status, &body),
            retryable,
        })
    }
}

/// One request to Stripe, as every attempt at it sends it.
struct Request<'a> {
    method: Method,
    path: &'a str,
    params: &'a Params<'a>,
    idempotency_key: Option<&'a str>,
}

/// An attempt's failure and whether trying again may help.
struct Attempt {
    error: StripeError,
    retryable: bool,
}

fn transport_error(error: reqwest::Error) -> Attempt {
    let error = if error.is_timeout() {
        StripeError::Timeout
    } else {
        // The chain names the cause (refused, reset, TLS); the URL holds no secret.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        StripeError::Network(text)
    };
    Attempt {
        error,
        retryable: true,
    }
}

/// Stripe's error body: `{"error": {"type", "code", "message"}}`.
fn api_error(status: StatusCode, body: &[u8]) -> StripeError {
    #[derive(Deserialize, Default)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize, Default)]
    struct Detail {
        #[serde(rename = "type")]
        kind: Option<String>,
        code: Option<String>,
        message: Option<String>,
    }
    let detail = serde_json::from_slice::<Body>(body).unwrap_or_default().error;
    StripeError::Api {
        status: status.as_u16(),
        kind: detail.kind.unwrap_or_else(|| "unknown_error".to_owned()),
        code: detail.code,
        message: detail
            .message
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIAL: Duration = Duration::from_secs(2);

    #[test]
    fn breaker_opens_after_consecutive_stripe_failures_only() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert!(breaker.admit(now, TRIAL));
            assert!(!breaker.record(true, now));
        }
        // A success in between starts the count again.
        assert!(!breaker.record(false, now));
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert!(!breaker.record(true, now));
        }
        assert!(breaker.admit(now, TRIAL));
        assert!(breaker.record(true, now), "the threshold-th failure opens it");
        assert!(!breaker.admit(now, TRIAL));
        assert!(!breaker.admit(now + BREAKER_COOLDOWN - Duration::from_millis(1), TRIAL));
    }

    #[test]
    fn after_the_cooldown_one_trial_decides() {
        let start = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD {
            breaker.record(true, start);
        }
        let later = start + BREAKER_COOLDOWN;
        assert!(breaker.admit(later, TRIAL), "one trial call");
        assert!(!breaker.admit(later, TRIAL), "others wait for the trial");
        // The trial fails: open again for a whole cooldown.
        assert!(breaker.record(true, later));
        assert!(!breaker.admit(later + TRIAL, TRIAL));
        // The next trial succeeds: closed, everything admitted.
        let again = later + BREAKER_COOLDOWN;
        assert!(breaker.admit(again, TRIAL));
        breaker.record(false, again);
        assert!(!breaker.is_open());
        assert!(breaker.admit(again, TRIAL) && breaker.admit(again, TRIAL));
    }

    #[test]
    fn an_abandoned_trial_does_not_keep_the_circuit_shut() {
        let start = Instant::now();
        let mut breaker = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD {
            breaker.record(true, start);
        }
        let later = start + BREAKER_COOLDOWN;
        assert!(breaker.admit(later, TRIAL));
        // Its caller went away: nothing recorded. After the trial's length, another trial.
        assert!(breaker.admit(later + TRIAL, TRIAL));
    }

    #[test]
    fn outages_are_told_from_refusals() {
        let refused = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such price: 'price_x'"}}"#,
        );
        assert!(!refused.is_outage());
        assert_eq!(
            refused.to_string(),
            "Stripe answered 404: invalid_request_error (resource_missing): No such price: 'price_x'"
        );
        assert!(api_error(StatusCode::BAD_GATEWAY, b"<html>").is_outage());
        assert!(StripeError::Timeout.is_outage() && StripeError::CircuitOpen.is_outage());
    }

    #[test]
    fn backoff_grows_and_stays_within_the_jitter() {
        for n in 1..=4 {
            let base = Duration::from_millis(100) * 2u32.pow(n - 1);
            let pause = Patience::Interactive.backoff(n);
            assert!(pause >= base && pause <= base.mul_f64(1.5), "{n}: {pause:?}");
        }
    }
}

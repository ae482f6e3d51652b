//! Calls to Stripe's API: async-stripe's typed requests (`CreateCustomer`,
//! `CreateCheckoutSession`…) sent by async-stripe's client (hyper, rustls with ring), wrapped
//! in keel's own policies. A call names its operation for the metrics and says how long its
//! caller can wait; see README ("Calling another Stripe API").
//!
//! Every call:
//! - goes to `STRIPE_API_BASE` with async-stripe's pinned [`API_VERSION`], so the shapes keel
//!   reads do not change under it when the account's default version moves;
//! - has a deadline ([`Patience`]): a page waits at most ~2 s for Stripe, a background job
//!   longer;
//! - is retried with backoff while that deadline allows, on network errors, timeouts, 409,
//!   429 and 5xx. Each attempt is sent once by async-stripe (`RequestStrategy::Once`, or
//!   `Idempotent(key)` for a create), so the retries, their pauses and the deadline are keel's.
//!   Only idempotent requests are retried at all: reads, and creates carrying an
//!   `Idempotency-Key` (every create does), so a retried create never makes a second object.
//!   async-stripe does not hand its caller the `Stripe-Should-Retry` header of a single
//!   attempt: the status decides;
//! - passes a circuit breaker: after [`BREAKER_THRESHOLD`] consecutive failures that are
//!   Stripe's (not answering, 5xx), calls fail at once for [`BREAKER_COOLDOWN`], then one
//!   trial call decides whether it closes. A Stripe outage costs a page ~2 s once, then
//!   nothing;
//! - is counted: `keel_stripe_requests_total{operation,outcome}`,
//!   `keel_stripe_request_duration_seconds{operation}`, `keel_stripe_circuit_open`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret as _, SecretString};
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use url::Url;

/// The API version every request asks for: the one async-stripe's types are generated from.
pub const API_VERSION: &str = "2026-09-30.endive";
/// Consecutive failures that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit refuses calls before one trial call is let through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(15);

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
    /// An error answer without Stripe's error body: something between keel and Stripe (a
    /// proxy, a load balancer) failing. async-stripe does not say its status.
    #[error("an error answer that is not Stripe's (a proxy or load balancer failing?)")]
    Unreadable,
    #[error("Stripe's answer could not be read: {0}")]
    Decode(String),
    /// async-stripe refused to build the request (a header value it cannot send).
    #[error("the request to Stripe could not be made: {0}")]
    Request(String),
}

impl StripeError {
    /// Stripe is down or unreachable (the caller shows "try again later"), rather than
    /// refusing what keel asked (a bug or a misconfiguration, e.g. an unknown price).
    pub fn is_outage(&self) -> bool {
        match self {
            StripeError::CircuitOpen
            | StripeError::Timeout
            | StripeError::Network(_)
            | StripeError::Unreadable => true,
            StripeError::Api { status, .. } => *status >= 500,
            StripeError::Decode(_) | StripeError::Request(_) => false,
        }
    }

    /// Whether another attempt may succeed: network errors, timeouts, 409 (a concurrent
    /// request with the same key), 429 and 5xx.
    fn is_retryable(&self) -> bool {
        match self {
            StripeError::Timeout | StripeError::Network(_) | StripeError::Unreadable => true,
            StripeError::Api { status, .. } => matches!(status, 409 | 429 | 500..),
            StripeError::CircuitOpen | StripeError::Decode(_) | StripeError::Request(_) => false,
        }
    }

    /// For `keel_stripe_requests_total{outcome}`.
    fn outcome(&self) -> &'static str {
        match self {
            StripeError::CircuitOpen => "circuit_open",
            StripeError::Timeout => "timeout",
            StripeError::Network(_) => "network",
            StripeError::Api { status, .. } if *status >= 500 => "server_error",
            StripeError::Unreadable => "server_error",
            StripeError::Api { .. } | StripeError::Request(_) => "client_error",
            StripeError::Decode(_) => "decode_error",
        }
    }
}

impl From<stripe::StripeError> for StripeError {
    fn from(error: stripe::StripeError) -> Self {
        match error {
            stripe::StripeError::Stripe(detail, status) => StripeError::Api {
                status,
                kind: detail.type_.as_str().to_owned(),
                code: detail.code.as_ref().map(|code| code.as_str().to_owned()),
                message: detail
                    .message
                    .unwrap_or_else(|| http_reason(status).unwrap_or("error").to_owned()),
            },
            // The only words async-stripe has for a non-2xx answer whose body is not Stripe's
            // `{"error": …}` (pinned with `=`, so they cannot change under keel).
            stripe::StripeError::JSONDeserialize(message) if message == UNREADABLE_ERROR_ANSWER => {
                StripeError::Unreadable
            }
            stripe::StripeError::JSONDeserialize(message) => StripeError::Decode(message),
            stripe::StripeError::ClientError(message) => StripeError::Network(message),
            stripe::StripeError::Timeout => StripeError::Timeout,
            stripe::StripeError::ConfigError(message) => StripeError::Request(message),
        }
    }
}

/// async-stripe's message for an error answer that is not Stripe's error shape.
const UNREADABLE_ERROR_ANSWER: &str = "error deserializing Stripe error";

fn http_reason(status: u16) -> Option<&'static str> {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
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

/// Whether an API key acts on live or on test data, from its prefix (`sk_live_`/`rk_live_`,
/// `sk_test_`/`rk_test_`). Events of the other mode are not applied (`billing::events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    Live,
    Test,
}

impl KeyMode {
    /// The key's mode; `None` for a key that names neither (Stripe's keys always do).
    pub fn of(key: &str) -> Option<Self> {
        let mode = key.strip_prefix("sk_").or_else(|| key.strip_prefix("rk_"))?;
        if mode.starts_with("live_") {
            Some(KeyMode::Live)
        } else if mode.starts_with("test_") {
            Some(KeyMode::Test)
        } else {
            None
        }
    }

    /// The `livemode` of the events and objects this key sees.
    pub fn livemode(self) -> bool {
        self == KeyMode::Live
    }
}

/// The Stripe API client; cheap to clone (one async-stripe client, one breaker).
#[derive(Clone)]
pub struct Stripe(Arc<Inner>);

struct Inner {
    client: stripe::Client,
    base: String,
    mode: Option<KeyMode>,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.0.base)
            .finish_non_exhaustive()
    }
}

impl Stripe {
    pub fn new(secret_key: SecretString, api_base: Url) -> anyhow::Result<Self> {
        // async-stripe appends `v1/…` to the base: with a slash, a base with a path (a proxy)
        // keeps it.
        let base = format!("{}/", api_base.as_str().trim_end_matches('/'));
        let client = stripe::ClientBuilder::new(secret_key.expose_secret())
            .url(base.clone())
            .app_info("keel", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
            .request_strategy(RequestStrategy::Once)
            .build()?;
        Ok(Self(Arc::new(Inner {
            client,
            base,
            mode: KeyMode::of(secret_key.expose_secret()),
            breaker: Mutex::new(Breaker::default()),
        })))
    }

    /// The mode of its key: live or test.
    pub fn mode(&self) -> Option<KeyMode> {
        self.0.mode
    }

    /// Sends a request that changes nothing (a retrieve, a list), retried freely.
    pub async fn read<R>(
        &self,
        operation: &'static str,
        request: &R,
        patience: Patience,
    ) -> Result<R::Output, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        self.read_as(operation, request, patience).await
    }

    /// [`Stripe::read`], the answer read as `T` rather than async-stripe's type (e.g. a page
    /// of subscriptions read leniently, like webhook events).
    pub async fn read_as<T: miniserde::Deserialize>(
        &self,
        operation: &'static str,
        request: &impl StripeRequest,
        patience: Patience,
    ) -> Result<T, StripeError> {
        self.call(operation, request, None, patience).await
    }

    /// Sends a request that creates an object. `idempotency_key` makes retries (ours, and a
    /// caller's repeating the same logical request) return the first object instead of a
    /// second one.
    pub async fn create<R>(
        &self,
        operation: &'static str,
        request: &R,
        idempotency_key: &str,
        patience: Patience,
    ) -> Result<R::Output, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        self.write_as(operation, request, idempotency_key, patience).await
    }

    /// Sends a request that creates or changes an object, with `idempotency_key` (see
    /// [`Stripe::create`]), its answer read as `T` rather than async-stripe's type.
    pub async fn write_as<T: miniserde::Deserialize>(
        &self,
        operation: &'static str,
        request: &impl StripeRequest,
        idempotency_key: &str,
        patience: Patience,
    ) -> Result<T, StripeError> {
        let key =
            IdempotencyKey::new(idempotency_key).map_err(|error| StripeError::Request(error.to_string()))?;
        self.call(operation, request, Some(key), patience).await
    }

    async fn call<T: miniserde::Deserialize>(
        &self,
        operation: &'static str,
        request: &impl StripeRequest,
        idempotency_key: Option<IdempotencyKey>,
        patience: Patience,
    ) -> Result<T, StripeError> {
        let started = Instant::now();
        let deadline = started + patience.deadline();
        let mut attempt = 1;
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = self
                .attempt(
                    request,
                    idempotency_key.as_ref(),
                    remaining.min(patience.attempt_timeout()),
                )
                .await;
            let retry = outcome.as_ref().is_err_and(StripeError::is_retryable);
            let pause = patience.backoff(attempt);
            if !retry || attempt >= patience.attempts() || Instant::now() + pause >= deadline {
                break outcome;
            }
            tracing::info!(operation, attempt, "Stripe call failed; retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.outcome(),
        };
        metrics::counter!("keel_stripe_requests_total", "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("keel_stripe_request_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// One attempt through the breaker: async-stripe sends the request once.
    async fn attempt<T: miniserde::Deserialize>(
        &self,
        request: &impl StripeRequest,
        idempotency_key: Option<&IdempotencyKey>,
        timeout: Duration,
    ) -> Result<T, StripeError> {
        if !self.breaker(|b| b.admit(Instant::now(), timeout)) {
            return Err(StripeError::CircuitOpen);
        }
        let strategy = idempotency_key.map_or(RequestStrategy::Once, |key| {
            RequestStrategy::Idempotent(key.clone())
        });
        let send = request
            .build()
            .customize::<T>()
            .request_strategy(strategy)
            .send(&self.0.client);
        // Dropping the future on time out closes its connection.
        let result = match tokio::time::timeout(timeout, send).await {
            Ok(result) => result.map_err(StripeError::from),
            Err(_) => Err(StripeError::Timeout),
        };
        let stripe_failed = result.as_ref().is_err_and(StripeError::is_outage);
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

    /// async-stripe's error for a `status` answer with `body`, as its client makes it.
    fn answered(status: u16, body: &str) -> StripeError {
        let error = match miniserde::json::from_str::<ErrorBody>(body) {
            Ok(body) => stripe::StripeError::Stripe(Box::new(body.error), status),
            Err(_) => stripe::StripeError::JSONDeserialize(UNREADABLE_ERROR_ANSWER.to_owned()),
        };
        error.into()
    }

    #[derive(miniserde::Deserialize)]
    struct ErrorBody {
        error: stripe::ApiErrors,
    }

    #[test]
    fn outages_are_told_from_refusals() {
        let refused = answered(
            404,
            r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such price: 'price_x'"}}"#,
        );
        assert!(!refused.is_outage() && !refused.is_retryable());
        assert_eq!(
            refused.to_string(),
            "Stripe answered 404: invalid_request_error (resource_missing): No such price: 'price_x'"
        );
        let failed = answered(500, r#"{"error":{"type":"api_error","message":"Boom"}}"#);
        assert!(failed.is_outage() && failed.is_retryable());
        let limited = answered(429, r#"{"error":{"type":"invalid_request_error"}}"#);
        assert!(!limited.is_outage() && limited.is_retryable());
        assert_eq!(
            limited.to_string(),
            "Stripe answered 429: invalid_request_error: Too Many Requests"
        );
        let proxy = answered(502, "<html>");
        assert!(proxy.is_outage() && proxy.is_retryable());
        assert!(StripeError::Timeout.is_outage() && StripeError::CircuitOpen.is_outage());
        assert!(!StripeError::from(stripe::StripeError::JSONDeserialize("x".into())).is_retryable());
    }

    #[test]
    fn a_key_says_its_mode() {
        assert_eq!(KeyMode::of("sk_live_51abc"), Some(KeyMode::Live));
        assert_eq!(KeyMode::of("rk_live_51abc"), Some(KeyMode::Live));
        assert_eq!(KeyMode::of("sk_test_51abc"), Some(KeyMode::Test));
        assert_eq!(KeyMode::of("rk_test_51abc"), Some(KeyMode::Test));
        for unknown in ["sk_51abc", "pk_live_51abc", "sk_livex", ""] {
            assert_eq!(KeyMode::of(unknown), None, "{unknown}");
        }
        assert!(KeyMode::Live.livemode() && !KeyMode::Test.livemode());
    }

    #[test]
    fn the_api_version_is_async_stripes() {
        assert_eq!(API_VERSION, stripe_shared::version::VERSION.as_str());
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

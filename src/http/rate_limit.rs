//! Per-client rate limiting of the site (SPEC: `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`),
//! with tower_governor keyed by our own client-address rule (see `client_ip`), counted in
//! each process; and the auth forms' budget (`AUTH_RATE_LIMIT_PER_MINUTE`), counted in Redis
//! so that every instance spends one budget.
//! tower_governor's `SmartIpKeyExtractor` believes any `X-Forwarded-For`, so it is not used.

use std::{net::IpAddr, net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{Quota, RateLimiter, clock::Clock as _, middleware::NoOpMiddleware};
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use tower_governor::{
    GovernorError, GovernorLayer,
    governor::{GovernorConfigBuilder, SharedRateLimiter},
    key_extractor::KeyExtractor,
};

use super::client_ip::{bucket, client_ip};
use crate::{cache::Cache, config::RateLimits, error::AppError};

/// The limiter's state: one token bucket per client.
pub type Limiter = SharedRateLimiter<IpAddr, NoOpMiddleware>;

/// Keys requests by client bucket. The peer address comes from `ConnectInfo`, which
/// `App::run` provides.
#[derive(Clone)]
pub struct ClientKey {
    trusted_proxies: Arc<[IpNet]>,
}

impl KeyExtractor for ClientKey {
    type Key = IpAddr;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .ok_or(GovernorError::UnableToExtractKey)?
            .0
            .ip();
        Ok(bucket(client_ip(peer, request.headers(), &self.trusted_proxies)))
    }
}

/// The site-wide limit: `limits.per_second` with bursts of `limits.burst`, every method.
pub fn layer(limits: RateLimits, trusted_proxies: &[IpNet]) -> anyhow::Result<(Layer, Limiter)> {
    let mut builder = GovernorConfigBuilder::default().key_extractor(ClientKey {
        trusted_proxies: trusted_proxies.into(),
    });
    builder
        .period(Duration::from_secs(1) / limits.per_second)
        .burst_size(limits.burst);
    let config = builder.finish().context("rate limits must be at least 1")?;
    let limiter = Arc::clone(config.limiter());
    let layer = GovernorLayer::new(config).error_handler(too_many_requests);
    Ok((layer, limiter))
}

/// The auth forms' budget: `per_minute` POSTs a minute per client, in bursts of as many.
/// Counted in Redis, one atomic round trip per POST; while Redis fails, each process counts
/// alone (`local`, the same rule) and says so (`Cache::limits_local`, `/health`).
#[derive(Clone)]
pub struct AuthBudget(Arc<Budget>);

struct Budget {
    cache: Cache,
    local: Limiter,
    trusted_proxies: Arc<[IpNet]>,
    per_minute: u32,
}

/// GCRA on Redis's clock: KEYS[1] holds the client's theoretical arrival time (ms). With
/// ARGV[1] ms between requests and bursts of ARGV[2], answers 0 and counts the request, or
/// the milliseconds until one would be allowed.
static TAKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
        local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
        local allowed_at = tat + interval - burst * interval
        if now < allowed_at then return allowed_at - now end
        redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
        return 0
        ",
    )
});

impl AuthBudget {
    pub fn new(limits: RateLimits, trusted_proxies: &[IpNet], cache: Cache) -> anyhow::Result<Self> {
        let per_minute = NonZeroU32::new(limits.auth_per_minute)
            .context("AUTH_RATE_LIMIT_PER_MINUTE must be at least 1")?;
        Ok(Self(Arc::new(Budget {
            cache,
            local: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            trusted_proxies: trusted_proxies.into(),
            per_minute: per_minute.get(),
        })))
    }

    /// The per-process fallback's state, to be trimmed like the site limiter's.
    pub fn local_limiter(&self) -> Limiter {
        Arc::clone(&self.0.local)
    }

    /// Spends one request of `client`'s budget, or says how long to wait.
    async fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let budget = &self.0;
        let key = hex::encode(Sha256::digest(client.to_string().as_bytes()));
        let interval_ms = 60_000 / u64::from(budget.per_minute);
        let taken: redis::RedisResult<u64> = TAKE
            .key(budget.cache.key(&format!("auth-budget:{key}")))
            .arg(interval_ms.max(1))
            .arg(budget.per_minute)
            .invoke_async(&mut budget.cache.connection())
            .await;
        match taken {
            Ok(wait_ms) => {
                budget.cache.limits_shared();
                match wait_ms {
                    0 => Ok(()),
                    ms => Err(Duration::from_millis(ms)),
                }
            }
            Err(error) => {
                budget.cache.limits_local(&error);
                budget
                    .local
                    .check_key(&client)
                    .map_err(|not_until| not_until.wait_time_from(budget.local.clock().now()))
            }
        }
    }
}

/// The middleware of the auth forms: POSTs spend the client's budget (showing a form is never
/// refused); over it, 429 with `Retry-After`.
pub async fn auth_budget(
    State(budget): State<AuthBudget>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST {
        let client = bucket(client_ip(peer.ip(), request.headers(), &budget.0.trusted_proxies));
        if let Err(wait) = budget.take(client).await {
            return AppError::TooManyRequests {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            }
            .into_response();
        }
    }
    next.run(request).await
}

pub type Layer = GovernorLayer<ClientKey, NoOpMiddleware, Body>;

/// How often the limiter forgets clients that have been quiet.
const FORGET_PERIOD: Duration = Duration::from_secs(60);

/// A limiter keeps a bucket per client it has seen; dropping the full (idle) ones now and
/// then keeps its memory flat. Runs until `shutdown`.
pub async fn forget_quiet_clients(limiters: Vec<Limiter>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(FORGET_PERIOD);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                for limiter in &limiters {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

fn too_many_requests(error: GovernorError) -> Response {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => AppError::TooManyRequests {
            retry_after_secs: wait_time,
        }
        .into_response(),
        GovernorError::UnableToExtractKey => AppError::Internal(anyhow::anyhow!(
            "no peer address: serve with ConnectInfo<SocketAddr>"
        ))
        .into_response(),
        GovernorError::Other { code, .. } => code.into_response(),
    }
}

//! Per-client rate limiting of the site (SPEC: `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`),
//! with tower_governor keyed by our own client-address rule (see `client_ip`).
//! tower_governor's `SmartIpKeyExtractor` believes any `X-Forwarded-For`, so it is not used.

use std::{net::IpAddr, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request},
    response::{IntoResponse, Response},
};
use governor::middleware::NoOpMiddleware;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tower_governor::{
    GovernorError, GovernorLayer,
    governor::{GovernorConfigBuilder, SharedRateLimiter},
    key_extractor::KeyExtractor,
};

use super::client_ip::{bucket, client_ip};
use crate::{config::RateLimits, error::AppError};

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

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
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
    build(
        Duration::from_secs(1) / limits.per_second,
        limits.burst,
        None,
        trusted_proxies,
    )
}

/// The stricter limit of the auth forms (`AUTH_RATE_LIMIT_PER_MINUTE`): POSTs only, so
/// showing a form is never refused.
pub fn auth_forms_layer(limits: RateLimits, trusted_proxies: &[IpNet]) -> anyhow::Result<(Layer, Limiter)> {
    build(
        Duration::from_secs(60) / limits.auth_per_minute,
        limits.auth_per_minute,
        Some(vec![Method::POST]),
        trusted_proxies,
    )
}

pub type Layer = GovernorLayer<ClientKey, NoOpMiddleware, Body>;

fn build(
    period: Duration,
    burst: u32,
    methods: Option<Vec<Method>>,
    trusted_proxies: &[IpNet],
) -> anyhow::Result<(Layer, Limiter)> {
    let mut builder = GovernorConfigBuilder::default().key_extractor(ClientKey {
        trusted_proxies: trusted_proxies.into(),
    });
    builder.period(period).burst_size(burst);
    if let Some(methods) = methods {
        builder.methods(methods);
    }
    let config = builder.finish().context("rate limits must be at least 1")?;
    let limiter = Arc::clone(config.limiter());
    let layer = GovernorLayer::new(config).error_handler(too_many_requests);
    Ok((layer, limiter))
}

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

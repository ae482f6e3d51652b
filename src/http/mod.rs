//! The HTTP surface: the one route map and the middleware stack around it.
//!
//! Handlers live in one file per area; they parse input, call feature code and render.
//! Nothing outside `http` imports from it.

mod assets;
pub mod client_ip;
mod errors;
mod health;
mod metrics;
mod middleware;
mod pages;
pub mod rate_limit;

use std::sync::Arc;

use askama::Template;
use axum::{
    Router,
    http::{HeaderName, StatusCode},
    response::Html,
};
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::CompressionLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
};

use crate::{cache::Cache, config::Config, error::AppError, health::HealthChecker};

/// Largest body a form route accepts; larger gets 413.
pub const FORM_BODY_LIMIT: usize = 64 * 1024;
/// Largest body `/webhooks/stripe` accepts (Stripe events are far smaller).
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers can reach (`State<AppState>`), behind one `Arc`: axum clones the state for
/// every request, so that clone is kept to one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub config: Config,
    pub db: PgPool,
    pub cache: Cache,
    pub health: HealthChecker,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The whole application as one `Router`, and the rate limiter whose memory the caller must
/// trim now and then (see [`rate_limit::forget_quiet_clients`]).
pub fn router(state: AppState) -> anyhow::Result<(Router, rate_limit::Limiter)> {
    let config = &state.config;
    let (rate_limit, limiter) = rate_limit::layer(config.rate_limits, &config.trusted_proxies)?;

    // Pages and forms: rate limited per client, small bodies.
    let site = Router::new()
        .merge(pages::router())
        .merge(assets::router())
        .merge(metrics::router())
        .fallback(errors::not_found)
        .layer(RequestBodyLimitLayer::new(FORM_BODY_LIMIT))
        .layer(rate_limit);

    // Probes are never rate limited: an uptime monitor must not be told 429.
    let probes = health::router();

    let stack = ServiceBuilder::new()
        .map_request(middleware::drop_untrusted_request_id)
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(middleware::trace_layer())
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::map_response_with_state(
            Arc::new(middleware::security_headers(config)),
            middleware::add_security_headers,
        ))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::from_fn(errors::render_errors))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ));

    let router = Router::new()
        .merge(probes)
        .merge(site)
        .layer(stack)
        .with_state(state);
    Ok((router, limiter))
}

/// Renders an askama template into an HTML response.
pub fn render(template: &impl Template) -> Result<Html<String>, AppError> {
    template
        .render()
        .map(Html)
        .map_err(|error| AppError::Internal(anyhow::Error::new(error).context("rendering a template")))
}

//! `GET /metrics` (Prometheus text format) and the middleware that counts and times requests.
//!
//! Access (SPEC.md): with `METRICS_TOKEN` set, only `Authorization: Bearer <token>`; without
//! it, open in development and 404 in production (nginx also denies it from outside).

use std::time::Instant;

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use secrecy::ExposeSecret as _;

use super::AppState;
use crate::{
    billing,
    error::{AppError, Result},
    telemetry,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    match &state.config.metrics_token {
        Some(token) if !bearer_matches(&headers, token.expose_secret()) => {
            return Ok((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            )
                .into_response());
        }
        Some(_) => {}
        None if state.config.is_production() => return Err(AppError::NotFound),
        None => {}
    }
    billing::record_dunning_gauge(&state.db).await;
    let handle = telemetry::metrics();
    handle.run_upkeep();
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        handle.render(),
    )
        .into_response())
}

/// Compares in time independent of where the tokens differ.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (given, token) = (given.as_bytes(), token.as_bytes());
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Counts requests (`keel_http_requests_total{method,route,status}`) and times them
/// (`keel_http_request_duration_seconds{method,route}`). The route is the matched template,
/// never the raw path, so scanners cannot create unbounded label values. Probes are not
/// counted (as they are not logged): `/health` has its own monitoring.
pub async fn track(request: Request, next: Next) -> Response {
    if super::middleware::is_probe(request.uri().path()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("keel_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("keel_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        let token = "s3cret-metrics-token";
        assert!(bearer_matches(&with("Bearer s3cret-metrics-token"), token));
        for wrong in [
            "Bearer s3cret-metrics-tokeN",
            "Bearer s3cret",
            "Bearer s3cret-metrics-token2",
            "Basic s3cret-metrics-token",
            "s3cret-metrics-token",
        ] {
            assert!(!bearer_matches(&with(wrong), token), "{wrong}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), token));
    }
}

//! `GET /metrics` (Prometheus text format) and the counting and timing of requests.
//!
//! Access (SPEC.md): with `METRICS_TOKEN` set, only `Authorization: Bearer <token>`; without
//! it, open in development and 404 in production (nginx also denies it from outside).

use std::{
    collections::HashMap,
    sync::{LazyLock, PoisonError, RwLock},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics::{Counter, Histogram};
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

/// Counts a request (`keel_http_requests_total{method,route,status}`) and its time
/// (`keel_http_request_duration_seconds{method,route}`); called by `middleware::trace` for
/// every request but probes (`/health` has its own monitoring). The route is the matched
/// template, never the raw path, and a method outside the standard ones is counted as
/// `OTHER` ([`method_label`]), so scanners cannot create unbounded label values.
pub fn record_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    let (requests, duration) = handles(method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|label| *label == method.as_str())
        .unwrap_or("OTHER")
}

/// The metric handles of one (method, route, status). Looked up in the recorder, that costs
/// hashing the labels and five allocations per request (~1–2 µs on `/`); kept here, a read
/// lock and a short scan. The set is bounded: routes are the route map's templates.
fn handles(method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
    type Seen = HashMap<String, Vec<(&'static str, u16, Counter, Histogram)>>;
    static SEEN: LazyLock<RwLock<Seen>> = LazyLock::new(RwLock::default);
    let find = |seen: &Seen| {
        seen.get(route)?
            .iter()
            .find(|(m, s, ..)| *m == method && *s == status)
            .map(|(.., requests, duration)| (requests.clone(), duration.clone()))
    };
    if let Some(found) = find(&SEEN.read().unwrap_or_else(PoisonError::into_inner)) {
        return found;
    }
    let mut seen = SEEN.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = find(&seen) {
        return found;
    }
    let requests = metrics::counter!(
        "keel_http_requests_total",
        "method" => method, "route" => route.to_owned(), "status" => status.to_string()
    );
    let duration = metrics::histogram!(
        "keel_http_request_duration_seconds",
        "method" => method, "route" => route.to_owned()
    );
    seen.entry(route.to_owned())
        .or_default()
        .push((method, status, requests.clone(), duration.clone()));
    (requests, duration)
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

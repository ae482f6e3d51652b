//! `/health` (dependencies) and `/health/live` (the process), for uptime monitors and the
//! container HEALTHCHECK.

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::AppState;
use crate::health::Status;

const HEALTH_JSON: HeaderValue = HeaderValue::from_static("application/health+json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
}

async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.report().await;
    let status = match report.status {
        Status::Pass | Status::Warn => StatusCode::OK,
        Status::Fail => StatusCode::SERVICE_UNAVAILABLE,
    };
    match serde_json::to_vec(&report) {
        Ok(body) => health_json(status, body),
        Err(error) => {
            tracing::error!(%error, "serializing the health report");
            health_json(StatusCode::SERVICE_UNAVAILABLE, br#"{"status":"fail"}"#.to_vec())
        }
    }
}

async fn live() -> Response {
    health_json(StatusCode::OK, br#"{"status":"pass"}"#.to_vec())
}

fn health_json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HEALTH_JSON),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

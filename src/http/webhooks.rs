//! `POST /webhooks/stripe`: Stripe's deliveries. Outside the site's CSRF check and rate limit
//! (Stripe is neither a browser nor one client among many); authenticated by the signature.
//!
//! 200 only once the event and its processing job are committed; 400 for a bad signature or
//! a body that is not an event (nothing stored: Stripe shows the failure to the operator);
//! 503 when no secret is configured or the database is down (Stripe retries for three days).

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    routing::post,
};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tower_http::limit::RequestBodyLimitLayer;

use super::{AppState, WEBHOOK_BODY_LIMIT};
use crate::{
    billing::webhooks::{self, Envelope},
    error::AppError,
    telemetry::Sampled,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/stripe", post(receive))
        .layer(RequestBodyLimitLayer::new(WEBHOOK_BODY_LIMIT))
}

fn count(kind: &str, outcome: &'static str) {
    metrics::counter!("keel_webhook_events_total", "type" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = &state.webhooks else {
        count("unknown", "unconfigured");
        return AppError::Unavailable(anyhow::anyhow!("STRIPE_WEBHOOK_SECRET is not set")).into_response();
    };
    let signature = headers.get("stripe-signature").map(HeaderValue::as_bytes);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Err(problem) = verifier.verify(signature, &body, now) {
        count("unknown", "bad_signature");
        // Anyone can send these: one line a second at most (the metric counts them all).
        static REFUSED: Sampled = Sampled::new(Duration::from_secs(1));
        if let Some(held_back) = REFUSED.allow() {
            tracing::warn!(reason = %problem, held_back, "webhook delivery refused: bad signature");
        }
        return AppError::BadRequest(format!("signature check failed: {problem}")).into_response();
    }
    let envelope = match Envelope::parse(&body) {
        Ok(envelope) => envelope,
        Err(problem) => {
            count("unknown", "not_an_event");
            return AppError::BadRequest(problem.to_string()).into_response();
        }
    };
    match webhooks::store(&state.db, &state.job_waker, &envelope, &body).await {
        Ok(Ok(stored)) => {
            count(&envelope.kind, stored.as_str());
            tracing::info!(
                event = envelope.id,
                kind = envelope.kind,
                outcome = stored.as_str(),
                "webhook event"
            );
            Json(json!({ "received": true })).into_response()
        }
        Ok(Err(problem)) => {
            count(&envelope.kind, "not_an_event");
            AppError::BadRequest(problem.to_string()).into_response()
        }
        Err(error) => {
            count(&envelope.kind, "unavailable");
            error.into_response()
        }
    }
}

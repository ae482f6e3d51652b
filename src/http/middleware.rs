//! Cross-cutting middleware: request ids, the access log, security headers.

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, header},
    response::Response,
};
use std::{sync::Arc, time::Duration};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};
use tracing::Span;

use super::REQUEST_ID;
use crate::config::Config;

/// A client may pass its own `x-request-id` (nginx does) so one id follows a request across
/// hops; anything that is not a short token is replaced, so logs cannot be forged through it.
pub fn drop_untrusted_request_id(mut request: Request) -> Request {
    let acceptable = request.headers().get(&REQUEST_ID).is_some_and(|value| {
        let bytes = value.as_bytes();
        (1..=64).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !acceptable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Probes are polled every few seconds; logging or counting each would drown the signal.
pub fn is_probe(path: &str) -> bool {
    path == "/health" || path == "/health/live"
}

type AccessLog = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request) -> Span,
    (),
    fn(&Response, Duration, &Span),
    (),
    (),
    (),
>;

/// One span per request carrying method, route and request id (so every log line written while
/// handling it names them), and one access-log line when it is answered. The query string is
/// never logged: it can carry tokens (`/reset-password?token=…`).
pub fn trace_layer() -> AccessLog {
    fn make_span(request: &Request) -> Span {
        if is_probe(request.uri().path()) {
            return Span::none();
        }
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("(none)", MatchedPath::as_str);
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        tracing::info_span!("request", method = %request.method(), route, request_id)
    }
    fn log_response(response: &Response, latency: Duration, span: &Span) {
        if span.is_none() {
            return;
        }
        tracing::info!(
            status = response.status().as_u16(),
            latency_us = latency.as_micros() as u64,
            "served"
        );
    }
    TraceLayer::new_for_http()
        .make_span_with(make_span as fn(&Request) -> Span)
        .on_request(())
        .on_response(log_response as fn(&Response, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// The headers every response carries (SPEC.md). HSTS only when the site is https: sent over
/// plain http it would be ignored, and on localhost it would break development.
pub fn security_headers(config: &Config) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    // Forms post to our own routes, which may redirect to Stripe Checkout and the billing
    // portal; browsers apply form-action to that redirect too.
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self' https://checkout.stripe.com https://billing.stripe.com; \
         frame-ancestors 'none'",
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "strict-origin-when-cross-origin");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=()",
    );
    if config.is_https() {
        set(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        );
    }
    headers
}

pub async fn add_security_headers<B>(
    State(headers): State<Arc<HeaderMap>>,
    mut response: Response<B>,
) -> Response<B> {
    for (name, value) in headers.iter() {
        if !response.headers().contains_key(name) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

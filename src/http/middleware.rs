//! Cross-cutting middleware, all of it tower-http's: request ids, the request span with its
//! access-log line and request metrics, and the security headers.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{self, HeaderValue, header},
};
use tower::util::MapRequestLayer;
use tower_http::{
    classify::{ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::{MakeSpan, OnResponse, TraceLayer},
};
use tracing::Span;

use super::{REQUEST_ID, metrics};

/// Probes are polled every few seconds; logging or counting each would drown the signal.
pub fn is_probe(path: &str) -> bool {
    path == "/health" || path == "/health/live"
}

/// The request id: the client's `x-request-id` if it is a short token (nginx sends one, so one
/// id follows a request across hops), else a new UUID, so logs cannot be forged through it.
/// The response carries it back.
pub fn request_ids() -> (
    MapRequestLayer<KeepRequest>,
    SetRequestIdLayer<NewUuid>,
    PropagateRequestIdLayer,
) {
    (
        MapRequestLayer::new(drop_unacceptable_request_id as KeepRequest),
        SetRequestIdLayer::new(REQUEST_ID.clone(), NewUuid),
        PropagateRequestIdLayer::new(REQUEST_ID.clone()),
    )
}

type KeepRequest = fn(Request) -> Request;

/// A new UUID v4 (tower-http's `MakeRequestUuid` formats it into a `String` first).
#[derive(Clone, Copy)]
pub struct NewUuid;

impl MakeRequestId for NewUuid {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Removes a client's request id that is not a short token, so that one is generated.
fn drop_unacceptable_request_id(mut request: Request) -> Request {
    let acceptable = request.headers().get(&REQUEST_ID).is_none_or(|value| {
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

/// A span per request carrying method, route template and request id, so every line logged
/// while handling it names them; one access-log line (`served`, with status and latency) when
/// it is answered; and the request metrics. The query string is never logged: it can carry
/// tokens (`/reset-password?token=…`). Probes are neither logged nor counted.
pub fn trace() -> TraceLayer<CountRequests, RequestSpan, (), Served, (), (), ()> {
    TraceLayer::new(CountRequests)
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(Served)
        .on_body_chunk(())
        .on_eos(())
        // An error is logged once, with its cause, by the error pages.
        .on_failure(())
}

#[derive(Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        if is_probe(request.uri().path()) {
            return Span::none();
        }
        tracing::info_span!(
            "request",
            method = request.method().as_str(),
            route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("(none)", MatchedPath::as_str),
            request_id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|id| id.to_str().ok())
                .unwrap_or_default(),
        )
    }
}

/// The access-log line, inside the request's span.
#[derive(Clone, Copy)]
pub struct Served;

impl<B> OnResponse<B> for Served {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &Span) {
        // No span: a probe (or INFO is off, and so is this line).
        if !span.is_disabled() {
            let status = response.status().as_u16();
            tracing::info!(status, latency_us = latency.as_micros() as u64, "served");
        }
    }
}

/// Counts each request in [`metrics::record_request`]. The trace layer hands its classifier
/// the request and then the response, so it is where both are seen without a layer of ours.
#[derive(Clone, Copy)]
pub struct CountRequests;

#[derive(Clone)]
pub struct Counted(Option<(&'static str, Option<MatchedPath>, Instant)>);

impl MakeClassifier for CountRequests {
    type Classifier = Counted;
    type FailureClass = ();
    type ClassifyEos = NeverClassifyEos<()>;

    fn make_classifier<B>(&self, request: &http::Request<B>) -> Counted {
        Counted((!is_probe(request.uri().path())).then(|| {
            (
                metrics::method_label(request.method()),
                request.extensions().get::<MatchedPath>().cloned(),
                Instant::now(),
            )
        }))
    }
}

impl ClassifyResponse for Counted {
    type FailureClass = ();
    type ClassifyEos = NeverClassifyEos<()>;

    fn classify_response<B>(self, response: &http::Response<B>) -> ClassifiedResponse<(), Self::ClassifyEos> {
        if let Some((method, route, started)) = self.0 {
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            metrics::record_request(method, route, response.status().as_u16(), started.elapsed());
        }
        ClassifiedResponse::Ready(Ok(()))
    }

    fn classify_error<E>(self, _error: &E) {}
}

type SetHeader = SetResponseHeaderLayer<Option<HeaderValue>>;

/// The headers every response carries (SPEC.md), unless the handler set its own. HSTS only
/// when the site is https: sent over plain http it would be ignored, and on localhost it would
/// break development. `Cache-Control: no-store` unless the handler says otherwise (the
/// fingerprinted assets do): pages carry a user's data, CSRF tokens or an emailed link's
/// token, and no browser or shared cache may keep them.
pub fn security_headers(
    https: bool,
) -> (
    SetHeader,
    SetHeader,
    SetHeader,
    SetHeader,
    SetHeader,
    SetHeader,
    SetHeader,
    SetHeader,
) {
    let set = |name: header::HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, Some(HeaderValue::from_static(value)))
    };
    (
        // Forms post to our own routes, which may redirect to Stripe Checkout and the billing
        // portal; browsers apply form-action to that redirect too.
        set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
             form-action 'self' https://checkout.stripe.com https://billing.stripe.com; \
             frame-ancestors 'none'",
        ),
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        set(header::CACHE_CONTROL, "no-store"),
        set(header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
        set(header::X_FRAME_OPTIONS, "DENY"),
        set(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        set(
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
        SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            https.then(|| HeaderValue::from_static("max-age=63072000; includeSubDomains")),
        ),
    )
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::StatusCode, response::Response, routing::get};
    use tower::ServiceExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::testing::Captured;

    fn lines_of(captured: &Captured) -> Vec<serde_json::Value> {
        let text = captured.text();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn app() -> Router {
        async fn item() -> &'static str {
            tracing::info!("looking the item up");
            "an item"
        }
        async fn own_frame_options() -> Response {
            let mut response = Response::new(Body::from("framed"));
            response
                .headers_mut()
                .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
            response
        }
        Router::new()
            .route("/items/{id}", get(item))
            .route("/framed", get(own_frame_options))
            .route("/health", get(|| async { "ok" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(
                tower::ServiceBuilder::new()
                    .layer(request_ids())
                    .layer(trace())
                    .layer(security_headers(false)),
            )
    }

    async fn fetch(path: &str, request_id: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        app().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn each_request_is_logged_once_by_route_template_with_its_request_id_and_never_its_query() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(crate::telemetry::json_lines(captured.clone()));
        let _default = tracing::subscriber::set_default(subscriber);

        let found = fetch("/items/42?token=s3cret", Some("nginx-7.a_b")).await;
        assert_eq!(found.status(), StatusCode::OK);
        assert_eq!(found.headers()["x-request-id"], "nginx-7.a_b");
        let missing = fetch("/no/such/page", Some("a b")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let generated = missing.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
        assert_eq!(fetch("/health", None).await.status(), StatusCode::OK);

        let lines = lines_of(&captured);
        let messages: Vec<_> = lines
            .iter()
            .map(|line| line["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            messages,
            ["looking the item up", "served", "served"],
            "{lines:#?}"
        );
        for line in &lines[..2] {
            assert_eq!(line["span"]["route"], "/items/{id}");
            assert_eq!(line["span"]["method"], "GET");
            assert_eq!(line["span"]["request_id"], "nginx-7.a_b");
        }
        assert_eq!(lines[1]["status"], 200);
        assert!(lines[1]["latency_us"].is_u64());
        assert_eq!(lines[2]["span"]["route"], "(none)");
        assert_eq!(lines[2]["span"]["request_id"], generated.as_str());
        assert_eq!(lines[2]["status"], 404);
        let text = captured.text();
        assert!(!text.contains("s3cret") && !text.contains("token"), "{text}");
    }

    #[tokio::test]
    async fn every_response_gets_the_security_headers_a_handler_did_not_set() {
        for path in ["/items/1", "/missing", "/health"] {
            let response = fetch(path, None).await;
            assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff",
                "{path}"
            );
            assert!(response.headers().contains_key("x-request-id"), "{path}");
        }
        let framed = fetch("/framed", None).await;
        assert_eq!(framed.headers()[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(
            framed.headers().get_all(header::X_FRAME_OPTIONS).iter().count(),
            1
        );
        assert_eq!(framed.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}

//! Cross-cutting middleware: request ids, the access log, request metrics and security
//! headers ([`Observe`]), and [`around`], which the other site-wide middleware is built on.
//!
//! Both are hand-written tower services rather than `axum::middleware::from_fn`: a `from_fn`
//! middleware owns its inner service through `Next`, so it clones the whole stack inside it
//! for every request (each clone a boxed allocation per route layer) and drops it afterwards.
//! These call the inner service in place. Measured with callgrind on `/`: see
//! docs/PERFORMANCE.md.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    BoxError,
    body::{Bytes, HttpBody},
    extract::{MatchedPath, Request},
    http::{self, HeaderMap, HeaderValue, header},
    response::Response,
};
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::{REQUEST_ID, metrics};
use crate::config::Config;

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Probes are polled every few seconds; logging or counting each would drown the signal.
pub fn is_probe(path: &str) -> bool {
    path == "/health" || path == "/health/live"
}

/// What every request goes through first (see [`Observe`]).
#[derive(Clone)]
pub struct ObserveLayer {
    security_headers: Arc<HeaderMap>,
}

impl ObserveLayer {
    /// Sends `security_headers` ([`security_headers`]) with every response.
    pub fn new(security_headers: HeaderMap) -> Self {
        Self {
            security_headers: Arc::new(security_headers),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            security_headers: Arc::clone(&self.security_headers),
        }
    }
}

/// For every request:
/// - a request id: the client's `x-request-id` if it is a short token (nginx sends one, so one
///   id follows a request across hops), else a new UUID; anything else is replaced, so logs
///   cannot be forged through it. The response carries it back.
/// - one span carrying method, route template and request id, so every log line written while
///   handling the request names them, and one access-log line (`served`, with status and
///   latency) when it is answered. The query string is never logged: it can carry tokens
///   (`/reset-password?token=…`).
/// - `keel_http_requests_total` and `keel_http_request_duration_seconds` (see
///   [`metrics::record_request`]).
/// - the security headers, on every response (a handler's own value of one is kept).
///
/// Probes (`/health`, `/health/live`) get the request id and the headers but are neither
/// logged nor counted.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    security_headers: Arc<HeaderMap>,
}

impl<S, Body> Service<Request> for Observe<S>
where
    S: Service<Request, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> BoxedResponse {
        let request_id = request_id(&mut request);
        if is_probe(request.uri().path()) {
            let headers = Arc::clone(&self.security_headers);
            let answer = self.inner.call(request);
            return Box::pin(async move { Ok(finish(boxed(answer.await?), &headers, request_id)) });
        }

        let started = Instant::now();
        let method = metrics::method_label(request.method());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let span = tracing::info_span!(
            "request",
            method = request.method().as_str(),
            route = route.as_ref().map_or("(none)", MatchedPath::as_str),
            request_id = request_id.to_str().unwrap_or_default(),
        );
        let headers = Arc::clone(&self.security_headers);
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = finish(boxed(answer.await?), &headers, request_id);
                let status = response.status().as_u16();
                let elapsed = started.elapsed();
                tracing::info!(status, latency_us = elapsed.as_micros() as u64, "served");
                let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
                metrics::record_request(method, route, status, elapsed);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The security headers a response lacks, and its request id.
fn finish(mut response: Response, security_headers: &HeaderMap, request_id: HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.reserve(security_headers.len() + 1);
    for (name, value) in security_headers {
        headers.entry(name).or_insert_with(|| value.clone());
    }
    headers.entry(&REQUEST_ID).or_insert(request_id);
    response
}

/// A response of any body type as axum's `Response` (a `Body` is not boxed again).
fn boxed<B>(response: http::Response<B>) -> Response
where
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    response.map(axum::body::Body::new)
}

/// The client's request id if it is acceptable, else a new one written into the request.
fn request_id(request: &mut Request) -> HeaderValue {
    let acceptable = request.headers().get(&REQUEST_ID).filter(|value| {
        let bytes = value.as_bytes();
        (1..=64).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if let Some(id) = acceptable {
        return id.clone();
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let generated = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    let id =
        HeaderValue::from_str(generated).unwrap_or_else(|_| unreachable!("a UUID is a valid header value"));
    request.headers_mut().insert(&REQUEST_ID, id.clone());
    id
}

/// A middleware made of two plain functions: `before` sees (and may change) the request and
/// returns what `after` needs; `after` gets that and the response. The inner service is
/// called in place, where `axum::middleware::from_fn` would clone it for every request. For a
/// middleware that must await before calling the handler (read the body), use `from_fn`.
pub fn around<B, A>(before: B, after: A) -> Around<B, A> {
    Around { before, after }
}

#[derive(Clone)]
pub struct Around<B, A> {
    before: B,
    after: A,
}

impl<S, B: Clone, A: Clone> Layer<S> for Around<B, A> {
    type Service = AroundService<S, B, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService {
            inner,
            before: self.before.clone(),
            after: self.after.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AroundService<S, B, A> {
    inner: S,
    before: B,
    after: A,
}

impl<S, Body, B, A, C, F> Service<Request> for AroundService<S, B, A>
where
    S: Service<Request, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    B: Fn(&mut Request) -> C,
    A: Fn(C, Response) -> F + Clone + Send + 'static,
    C: Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> BoxedResponse {
        let context = (self.before)(&mut request);
        let answer = self.inner.call(request);
        let after = self.after.clone();
        Box::pin(async move {
            let response = boxed(answer.await?);
            Ok(after(context, response).await)
        })
    }
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

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::StatusCode, routing::get};
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
        let mut security_headers = HeaderMap::new();
        security_headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        security_headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        Router::new()
            .route("/items/{id}", get(item))
            .route("/framed", get(own_frame_options))
            .route("/health", get(|| async { "ok" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(ObserveLayer::new(security_headers))
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
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(captured.clone()),
        );
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

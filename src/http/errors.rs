//! Error pages: every 4xx/5xx leaves through `render_errors`, which logs the cause once and
//! answers an HTML page in the site layout, or JSON for clients that ask for it.

use std::any::Any;

use askama::Template;
use axum::{
    Json,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::pages::Layout;
use crate::error::{AppError, ErrorReport};

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    title: String,
    message: String,
}

/// The fallback of the site: nothing is routed here.
pub async fn not_found() -> AppError {
    AppError::NotFound
}

/// A panicking handler answers 500 (rendered by `render_errors`) instead of dropping the
/// connection; the panic message goes to the log only.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    AppError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// Largest framework-written explanation (e.g. a form rejection) copied into the page.
const MAX_DETAIL: usize = 300;

/// Around every handler (`from_fn`): a 4xx/5xx becomes the error page, or JSON when the
/// request asked for it ([`wants_json`]).
pub async fn error_pages(request: Request, next: Next) -> Response {
    let wants_json = wants_json(&request);
    render_errors(wants_json, next.run(request).await).await
}

async fn render_errors(wants_json: bool, response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let report = response.extensions().get::<ErrorReport>().cloned();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    // A handler that already rendered its own error body (a form with 422, a JSON API error)
    // keeps it; bare and plain-text framework responses get our page.
    let is_plain = content_type.is_none_or(|ct| ct.starts_with("text/plain"));
    if report.is_none() && !is_plain {
        return response;
    }
    let report = report.unwrap_or_default();
    if let Some(cause) = &report.cause {
        if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                error = format!("{cause:#}"),
                "request failed"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                error = format!("{cause:#}"),
                "request refused"
            );
        }
    } else if status.is_server_error() {
        tracing::error!(status = status.as_u16(), "request failed");
    }

    let (mut parts, body) = response.into_parts();
    let describes_input = matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY
    );
    let detail = if describes_input && report.public_message.is_none() {
        framework_detail(body).await
    } else {
        None
    };
    let message = report
        .public_message
        .or(detail)
        .unwrap_or_else(|| default_message(status).to_owned());
    let title = status.canonical_reason().unwrap_or("Error").to_owned();

    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let body = if wants_json {
        let json = json!({ "error": { "status": status.as_u16(), "title": title, "message": message } });
        Json(json).into_response().into_body()
    } else {
        let page = ErrorPage {
            layout: Layout::new(),
            status: status.as_u16(),
            title,
            message,
        };
        match page.render() {
            Ok(html) => {
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                Body::from(html)
            }
            Err(error) => {
                tracing::error!(error = %error, "rendering the error page");
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Body::from(default_message(status))
            }
        }
    };
    if wants_json {
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Response::from_parts(parts, body)
}

/// JSON for API clients (`Accept: application/json`, or a JSON body and no HTML in `Accept`);
/// HTML for browsers and everything else.
pub fn wants_json(request: &Request) -> bool {
    let header_text = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
    };
    let accept = header_text(header::ACCEPT);
    if accept.contains("text/html") {
        return false;
    }
    accept.contains("application/json") || header_text(header::CONTENT_TYPE).starts_with("application/json")
}

/// The plain-text explanation axum writes when it rejects input (e.g. "Failed to deserialize
/// form body: missing field `email`"): it is about the client's own request, so it is shown.
async fn framework_detail(body: Body) -> Option<String> {
    let bytes = axum::body::to_bytes(body, 4 * MAX_DETAIL).await.ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut detail: String = text.chars().take(MAX_DETAIL).collect();
    if detail.len() < text.len() {
        detail.push('…');
    }
    Some(detail)
}

fn default_message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "The request could not be understood.",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "You are not allowed to do that.",
        StatusCode::NOT_FOUND => "There is nothing at this address.",
        StatusCode::METHOD_NOT_ALLOWED => "This address does not accept that kind of request.",
        StatusCode::PAYLOAD_TOO_LARGE => "The request is too large.",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "The request has a content type this address does not accept.",
        StatusCode::UNPROCESSABLE_ENTITY => "Some of the input is not valid.",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests. Please wait a moment and try again.",
        StatusCode::SERVICE_UNAVAILABLE => {
            "The service is temporarily unavailable. Please try again shortly."
        }
        s if s.is_server_error() => "Something went wrong on our side. It has been logged; please try again.",
        _ => "The request could not be completed.",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, http::Request, routing::get};
    use tower::{ServiceBuilder, ServiceExt as _};
    use tower_http::{catch_panic::CatchPanicLayer, timeout::TimeoutLayer};

    use super::*;

    /// The error half of the real stack around handlers that misbehave.
    fn app() -> Router {
        async fn panics() -> &'static str {
            panic!("the database said something unexpected: password=hunter2")
        }
        async fn too_slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }
        Router::new()
            .route("/panic", get(panics))
            .route("/slow", get(too_slow))
            .layer(
                ServiceBuilder::new()
                    .layer(axum::middleware::from_fn(error_pages))
                    .layer(CatchPanicLayer::custom(panic_response))
                    .layer(TimeoutLayer::with_status_code(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Duration::from_millis(50),
                    )),
            )
    }

    async fn call(path: &str, accept: &str) -> (StatusCode, String, String) {
        let request = Request::get(path)
            .header("accept", accept)
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_500_page_that_hides_the_panic() {
        let (status, content_type, page) = call("/panic", "text/html").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "text/html; charset=utf-8");
        assert!(page.contains("Something went wrong on our side"), "{page}");
        assert!(
            !page.contains("hunter2") && !page.contains("database said"),
            "{page}"
        );

        let (status, content_type, json) = call("/panic", "application/json").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/json");
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[tokio::test]
    async fn a_handler_over_the_request_timeout_answers_503() {
        let (status, _, page) = call("/slow", "text/html").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(page.contains("temporarily unavailable"), "{page}");
    }
}

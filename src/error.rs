//! The one error type of request handling, and how it becomes a response.
//!
//! A handler returns `Result<T>`; an `AppError` turns into a bare response carrying its status
//! and an [`ErrorReport`]. The `render_errors` middleware (in `http::errors`) then logs the
//! cause once, inside the request span, and renders the page (HTML or JSON) for the client.
//! Users never see internal error text.

use std::sync::Arc;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

pub type Result<T, E = AppError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    /// The client sent something we cannot use; the message is shown to them.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency (PostgreSQL, Redis, Stripe) is down or too slow: 503, try again later.
    #[error("dependency unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed => AppError::Unavailable(error.into()),
            other => AppError::Internal(other.into()),
        }
    }
}

/// What a failed response carries for the `render_errors` middleware: the message the client
/// may see, and the cause that only the log may see.
#[derive(Clone, Debug, Default)]
pub struct ErrorReport {
    pub public_message: Option<String>,
    pub cause: Option<Arc<anyhow::Error>>,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        let report = match self {
            AppError::NotFound => ErrorReport::default(),
            AppError::BadRequest(message) => ErrorReport {
                public_message: Some(message),
                cause: None,
            },
            AppError::TooManyRequests { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                ErrorReport::default()
            }
            AppError::Unavailable(cause) | AppError::Internal(cause) => ErrorReport {
                public_message: None,
                cause: Some(Arc::new(cause)),
            },
        };
        response.extensions_mut().insert(report);
        response
    }
}

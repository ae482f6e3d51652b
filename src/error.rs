//! The one error type of request handling, and how it becomes a response.
//!
//! A handler returns `Result<T>`; an `AppError` turns into a bare response carrying its status
//! and an [`ErrorReport`]. The `render_errors` middleware (in `http::errors`) then logs the
//! cause once, inside the request span, and renders the page (HTML or JSON) for the client.
//! Users never see internal error text.

use std::sync::Arc;

use crate::billing::stripe::StripeError;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// What a person sees when Stripe cannot be reached.
const STRIPE_DOWN_MESSAGE: &str = "Payments are unavailable right now: our payment provider is not answering. Nothing was charged. Please try again in a few minutes.";
/// Stripe's circuit breaker tries again after about this long.
const STRIPE_RETRY_AFTER_SECS: u64 = 30;

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
    /// Stripe is down or too slow: 503 with a page that says so (and that nothing was
    /// charged).
    #[error("Stripe unavailable")]
    StripeUnavailable(#[source] anyhow::Error),
    /// The request was understood and refused (a missing or wrong CSRF token); the message
    /// is shown to the client.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request conflicts with the current state (subscribing twice); the message is
    /// shown to the client.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Whether a database error means "the database is unreachable" (503) rather than a bug:
/// no connection, or the server refusing work for a while (SQLSTATE class 08, connection
/// exception; class 57, shutting down, starting up or a connection terminated by an
/// administrator; 53300, too many connections).
fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            true
        }
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57") || code == "53300"),
        _ => false,
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        if database_unavailable(&error) {
            AppError::Unavailable(error.into())
        } else {
            AppError::Internal(error.into())
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(error: anyhow::Error) -> Self {
        let stripe_down = error.chain().any(|cause| {
            cause
                .downcast_ref::<StripeError>()
                .is_some_and(StripeError::is_outage)
        });
        if stripe_down {
            return AppError::StripeUnavailable(error);
        }
        let unavailable = error.chain().any(|cause| {
            cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(database_unavailable)
        });
        if unavailable {
            AppError::Unavailable(error)
        } else {
            AppError::Internal(error)
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
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) | AppError::StripeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        let report = match self {
            AppError::NotFound => ErrorReport::default(),
            AppError::BadRequest(message) | AppError::Forbidden(message) | AppError::Conflict(message) => {
                ErrorReport {
                    public_message: Some(message),
                    cause: None,
                }
            }
            AppError::TooManyRequests { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                ErrorReport::default()
            }
            AppError::StripeUnavailable(cause) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(STRIPE_RETRY_AFTER_SECS));
                ErrorReport {
                    public_message: Some(STRIPE_DOWN_MESSAGE.to_owned()),
                    cause: Some(Arc::new(cause)),
                }
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

//! CSRF protection for every state-changing request of the site (the Stripe webhook is
//! mounted outside it and is authenticated by its signature instead).
//!
//! The token is an HMAC, under a key derived from `SECRET_KEY`, of what only this browser
//! holds: its session cookie once signed in, before that a random `keel_csrf` cookie
//! (set the first time a page renders a form). So the token changes at login along with the
//! session, needs no storage, and a page of another site can neither read nor forge it. Forms
//! send it as the `csrf_token` field; scripts may send the `X-CSRF-Token` header.
//!
//! [`context`] runs on every request of the site; [`require`] wraps every route that changes
//! state (the route map's `form(…)`), so a POST/PUT/PATCH/DELETE with a missing or wrong token
//! is 403 before any handler runs and nothing changes, while a wrong method on another route is
//! still 405. Handlers that render a form take [`CsrfToken`].

use std::sync::{Arc, OnceLock};

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest as _, FromRequestParts, Request, State},
    http::{HeaderName, HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::Mac as _;
use sha2::Sha256;

use super::{AppState, session::cookie_value};
use crate::{accounts::SecretToken, config::SecretKey, error::AppError};

type Hmac = hmac::Hmac<Sha256>;

static CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");
const FORM_FIELD: &str = "csrf_token";

/// The key tokens are signed with, derived from `SECRET_KEY` for this purpose only.
#[derive(Clone)]
pub struct CsrfKey(Arc<[u8; 32]>);

impl CsrfKey {
    pub fn new(secret: &SecretKey) -> Self {
        Self(Arc::new(secret.derive(b"keel csrf v1")))
    }

    fn mac(&self, binding: &Binding) -> Hmac {
        let mut mac = <Hmac as hmac::KeyInit>::new_from_slice(&*self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        let (label, value): (&[u8], &str) = match binding {
            Binding::Session(value) => (b"session\0", value),
            Binding::Browser(value) => (b"browser\0", value),
        };
        mac.update(label);
        mac.update(value.as_bytes());
        mac
    }

    fn token(&self, binding: &Binding) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(binding).finalize().into_bytes())
    }

    /// Constant-time check of a submitted token.
    fn verify(&self, binding: &Binding, submitted: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(submitted.trim())
            .is_ok_and(|tag| self.mac(binding).verify_slice(&tag).is_ok())
    }
}

/// What a token is bound to.
#[derive(Clone, Debug)]
enum Binding {
    Session(String),
    Browser(String),
}

/// The browser cookie a page issued while rendering a form, if it did.
type Issued = Arc<OnceLock<String>>;

/// Per request: the binding found in the cookies, and the browser cookie issued if a form
/// needed one and there was none.
#[derive(Clone)]
struct CsrfContext {
    key: CsrfKey,
    binding: Option<Binding>,
    issued: Issued,
}

/// The token to put in a form's `csrf_token` field (or a `<meta>` for scripts).
#[derive(Clone, Debug)]
pub struct CsrfToken(pub String);

impl FromRequestParts<AppState> for CsrfToken {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, AppError> {
        let context = parts.extensions.get::<CsrfContext>().ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("CsrfToken used on a route outside csrf::context"))
        })?;
        let binding = match &context.binding {
            Some(binding) => binding.clone(),
            None => Binding::Browser(
                context
                    .issued
                    .get_or_init(|| SecretToken::generate().as_str().to_owned())
                    .clone(),
            ),
        };
        Ok(CsrfToken(context.key.token(&binding)))
    }
}

/// Runs on every request of the site (`from_fn_with_state`): finds what a token is bound to,
/// and sets the browser cookie when a page rendered a token for a browser that had none.
/// Refuses nothing.
pub async fn context(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let names = state.cookies;
    let headers = request.headers();
    let binding = cookie_value(headers, names.session)
        .filter(|token| SecretToken::parse(token).is_some())
        .map(|token| Binding::Session(token.to_owned()))
        .or_else(|| {
            cookie_value(headers, names.csrf)
                .filter(|token| SecretToken::parse(token).is_some())
                .map(|token| Binding::Browser(token.to_owned()))
        });
    let issued = Issued::default();
    request.extensions_mut().insert(CsrfContext {
        key: state.csrf.clone(),
        binding,
        issued: Arc::clone(&issued),
    });
    let mut response = next.run(request).await;
    if let Some(value) = issued.get() {
        let cookie = names.set_cookie(names.csrf, value, Some(BROWSER_COOKIE_LIFETIME));
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

const BROWSER_COOKIE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Wraps the handlers of a route that changes state (see `form` in the route map): a POST,
/// PUT, PATCH or DELETE without a valid token gets 403 before the handler runs.
pub async fn require(request: Request, next: Next) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let Some(context) = request.extensions().get::<CsrfContext>().cloned() else {
        return AppError::Internal(anyhow::anyhow!("csrf::require without csrf::context")).into_response();
    };
    let (request, submitted) = match submitted_token(request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let valid = match (&context.binding, &submitted) {
        (Some(binding), Some(submitted)) => context.key.verify(binding, submitted),
        _ => false,
    };
    if !valid {
        return AppError::Forbidden(
            "This form has expired or did not come from this site. Go back, reload the page and try again."
                .to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

/// The token sent with an unsafe request: the header, or else the `csrf_token` field of a
/// URL-encoded form (the body is read here, within the body limit, and handed on intact).
async fn submitted_token(request: Request) -> Result<(Request, Option<String>), Response> {
    if let Some(value) = request.headers().get(&CSRF_HEADER) {
        let token = value.to_str().ok().map(str::to_owned);
        return Ok((request, token));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value: &HeaderValue| value.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Ok((request, None));
    }
    // axum's `Bytes` extractor answers 413 past the body limit and 400 for a broken body.
    let (parts, body) = request.into_parts();
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(IntoResponse::into_response)?;
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(key, _)| key == FORM_FIELD)
        .map(|(_, value)| value.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> CsrfKey {
        CsrfKey(Arc::new([byte; 32]))
    }

    #[test]
    fn a_token_is_valid_for_its_own_binding_and_key_only() {
        let session = Binding::Session("a".repeat(43));
        let token = key(1).token(&session);
        assert!(key(1).verify(&session, &token));
        assert!(!key(2).verify(&session, &token), "another SECRET_KEY");
        assert!(
            !key(1).verify(&Binding::Session("b".repeat(43)), &token),
            "another session"
        );
        assert!(
            !key(1).verify(&Binding::Browser("a".repeat(43)), &token),
            "same value, other kind"
        );
        assert!(!key(1).verify(&session, ""));
        assert!(!key(1).verify(&session, "not base64 !"));
        assert!(!key(1).verify(&session, &token[..20]));
    }
}

//! Who is asking: the session cookie and the extractors handlers declare auth with.
//!
//! - [`MaybeUser`]: the signed-in user, if any (public pages that greet them).
//! - [`CurrentUser`]: a signed-in user, or a 303 to `/login?next=…` (pages behind login).
//!
//! The session is loaded once per request (one query, see `accounts::sessions`) and kept in
//! the request's extensions, so several extractors do not query again. Requests without a
//! session cookie never touch the database.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use cookie::{Cookie, SameSite};

use super::{AppState, client_ip::ClientIp};
use crate::{
    accounts::{SecretToken, Session, audit::Actor, sessions},
    error::AppError,
};

/// The cookie names, with the `__Host-` prefix when the site is https: browsers then refuse
/// the cookie unless it is Secure, host-only and for the whole site, so a sibling subdomain
/// cannot plant one.
#[derive(Clone, Copy, Debug)]
pub struct CookieNames {
    pub session: &'static str,
    pub csrf: &'static str,
    /// An emailed link's token, between its first `GET` and the page (see `http::auth`).
    pub verify_link: &'static str,
    pub reset_link: &'static str,
    pub invite_link: &'static str,
    /// Email change: the confirmation link, the link that restores the old address.
    pub change_link: &'static str,
    pub revert_link: &'static str,
    /// A half-done login waiting for its second factor.
    pub pending_login: &'static str,
    /// An operator's own session, kept aside while they view the product as a user.
    pub operator_session: &'static str,
    pub secure: bool,
}

impl CookieNames {
    pub fn new(secure: bool) -> Self {
        if secure {
            Self {
                session: "__Host-keel_session",
                csrf: "__Host-keel_csrf",
                verify_link: "__Host-keel_verify",
                reset_link: "__Host-keel_reset",
                invite_link: "__Host-keel_invite",
                change_link: "__Host-keel_change_email",
                revert_link: "__Host-keel_revert_email",
                pending_login: "__Host-keel_2fa",
                operator_session: "__Host-keel_operator",
                secure,
            }
        } else {
            Self {
                session: "keel_session",
                csrf: "keel_csrf",
                verify_link: "keel_verify",
                reset_link: "keel_reset",
                invite_link: "keel_invite",
                change_link: "keel_change_email",
                revert_link: "keel_revert_email",
                pending_login: "keel_2fa",
                operator_session: "keel_operator",
                secure,
            }
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, whole site, Secure under https.
    /// `max_age` of `None` removes the cookie.
    pub fn set_cookie(
        &self,
        name: &'static str,
        value: &str,
        max_age: Option<std::time::Duration>,
    ) -> HeaderValue {
        let max_age = max_age.map_or(cookie::time::Duration::ZERO, |age| {
            cookie::time::Duration::seconds(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
        });
        let cookie = Cookie::build((name, value))
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .path("/")
            .max_age(max_age)
            .build();
        // Names are constants and values are URL-safe base64: always a valid header value.
        HeaderValue::try_from(cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn session_cookie(&self, token: &SecretToken) -> HeaderValue {
        self.set_cookie(self.session, token.as_str(), Some(sessions::ABSOLUTE_TIMEOUT))
    }

    pub fn remove_session_cookie(&self) -> HeaderValue {
        self.set_cookie(self.session, "", None)
    }
}

/// The value of the cookie `name` in the request, if there is exactly such a cookie.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The session token the request carries, if well formed.
pub fn session_token(headers: &HeaderMap, names: &CookieNames) -> Option<SecretToken> {
    cookie_value(headers, names.session).and_then(SecretToken::parse)
}

/// A signed-in user: their session, team, and the token of this session.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub session: Session,
    pub token: SecretToken,
}

impl CurrentUser {
    /// The user as the team audit log names them, acting from `client`.
    pub fn actor(&self, client: ClientIp) -> Actor<'_> {
        Actor {
            user_id: self.session.user_id,
            email: &self.session.email,
            client: client.0,
        }
    }
}

/// The signed-in user, if there is one.
#[derive(Clone, Debug)]
pub struct MaybeUser(pub Option<CurrentUser>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(known) = parts.extensions.get::<MaybeUser>() {
            return Ok(known.clone());
        }
        let user = match session_token(&parts.headers, &state.cookies) {
            None => None,
            Some(token) => state
                .accounts
                .session(&token)
                .await?
                .map(|session| CurrentUser { session, token }),
        };
        let user = MaybeUser(user);
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// A signed-in user who may open the current team's pages: when the team requires two-factor
/// sign-in (`POST /team/security`), only once they have it; else a 303 to `/settings/2fa`.
/// (Settings, the team list and leaving the team stay open, so they can enrol or go.)
pub struct TeamPolicy;

impl FromRequestParts<AppState> for TeamPolicy {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, NotSignedIn> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        if user.session.team_requires_2fa && !user.session.two_factor {
            return Err(NotSignedIn::SignIn(Redirect::to(
                "/settings/2fa?notice=team-requires-2fa",
            )));
        }
        Ok(Self)
    }
}

/// Anyone but an operator viewing the product as a user: the forms that change how an
/// account signs in or end it (password, email, 2FA, sessions, deletion) answer 403 to an
/// impersonation (SPEC "Operator console").
pub struct NotImpersonating;

impl FromRequestParts<AppState> for NotImpersonating {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        match MaybeUser::from_request_parts(parts, state).await? {
            MaybeUser(Some(user)) if user.session.impersonator.is_some() => Err(AppError::Forbidden(
                "Not while viewing the product as this user: only they can change how they sign in."
                    .to_owned(),
            )),
            _ => Ok(Self),
        }
    }
}

/// Why a page that needs a signed-in user was not served.
pub enum NotSignedIn {
    /// No live session: sign in first, then come back here.
    SignIn(Redirect),
    Failed(AppError),
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        match self {
            NotSignedIn::SignIn(redirect) => redirect.into_response(),
            NotSignedIn::Failed(error) => error.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, NotSignedIn> {
        match MaybeUser::from_request_parts(parts, state).await {
            Ok(MaybeUser(Some(user))) => Ok(user),
            Ok(MaybeUser(None)) => {
                let here = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
                Err(NotSignedIn::SignIn(Redirect::to(&format!("/login?next={next}"))))
            }
            Err(error) => Err(NotSignedIn::Failed(error)),
        }
    }
}

/// Where to go after login: `next` if it is a path on this site, else the dashboard.
/// Refused: anything with a scheme or host (`https://evil`, `//evil`), backslashes (browsers
/// read `/\evil` as `//evil`), control characters, and anything not starting with `/`.
pub fn safe_next(next: Option<&str>) -> &str {
    const DEFAULT: &str = "/dashboard";
    let Some(next) = next else { return DEFAULT };
    let acceptable = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 2048
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && url::Url::parse("http://keel.invalid")
            .and_then(|base| base.join(next))
            .is_ok_and(|joined| joined.host_str() == Some("keel.invalid"));
    if acceptable { next } else { DEFAULT }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_site_paths_are_followed_after_login() {
        for good in [
            "/dashboard",
            "/settings?tab=1",
            "/billing#plans",
            "/a/b/../c",
            "/%0a/x",
        ] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "https://evil.example",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            " /dashboard",
            "/\n/evil.example",
        ] {
            assert_eq!(safe_next(Some(bad)), "/dashboard", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/dashboard");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; keel_session=abc; x_keel_session=no"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("keel_csrf=\"q\""));
        assert_eq!(cookie_value(&headers, "keel_session"), Some("abc"));
        assert_eq!(cookie_value(&headers, "keel_csrf"), Some("q"));
        assert_eq!(cookie_value(&headers, "session"), None);
    }

    #[test]
    fn cookies_carry_the_security_attributes() {
        let secure = CookieNames::new(true);
        let token = SecretToken::generate();
        let set = secure.session_cookie(&token);
        let set = set.to_str().unwrap();
        assert!(
            set.starts_with(&format!("__Host-keel_session={}", token.as_str())),
            "{set}"
        );
        for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=2592000"] {
            assert!(set.contains(attribute), "{attribute} missing from {set}");
        }
        let plain = CookieNames::new(false).remove_session_cookie();
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("keel_session=;"), "{plain}");
        assert!(
            plain.contains("Max-Age=0") && !plain.contains("Secure"),
            "{plain}"
        );
    }
}

/// Properties of `safe_next`, the one login-form field that becomes a `Location`.
#[cfg(test)]
mod properties {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// Text glued from the pieces of URLs and of the usual open-redirect tricks.
    fn next_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => prop::sample::select(vec![
                "/", "/", "//", "\\", "/\\", "https:", "http://", "javascript:", "evil.example", "@",
                ":", "?", "#", ".", "..", "%2f", "%5c", "%0a", "%00", "\t", "\n", "\r", "\0", " ",
                "\u{85}", "\u{a0}", "\u{3000}", "\u{2028}", "\u{ff0f}", "\u{2215}", "dashboard", "a",
                "x=1&y=2", "[::1]", "127.0.0.1",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ];
        vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(crate::proptest_config(2048))]

        /// The answer is the input or the dashboard; an accepted input is a path of this site
        /// whatever page it is resolved against, and always makes a valid `Location`.
        #[test]
        fn next_is_the_input_or_the_dashboard_and_stays_on_site(next in next_like()) {
            let answer = safe_next(Some(&next));
            prop_assert!(answer == next || answer == "/dashboard");
            if answer == next {
                prop_assert!(next.starts_with('/') && !next.starts_with("//"), "{:?}", next);
                prop_assert!(!next.contains('\\') && !next.chars().any(char::is_control), "{:?}", next);
                for base in ["http://keel.invalid", "https://app.example.com/deep/page?q=1#top"] {
                    let base = url::Url::parse(base).unwrap();
                    let joined = base.join(&next).unwrap();
                    prop_assert_eq!(joined.host_str(), base.host_str(), "{:?}", next);
                    prop_assert_eq!(joined.scheme(), base.scheme());
                }
                let response = Redirect::to(answer).into_response();
                prop_assert_eq!(response.status(), axum::http::StatusCode::SEE_OTHER);
                prop_assert_eq!(response.headers()[header::LOCATION].as_bytes(), next.as_bytes());
            }
        }
    }
}

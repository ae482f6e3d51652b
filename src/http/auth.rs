//! The account forms: sign up, log in and out, verify an email, forgot and reset a password.
//!
//! Handlers parse the form into domain values, call `accounts::Accounts`, and either redirect
//! (303) or render the form again with 422, a message per field and what the user typed
//! (never the password). CSRF is checked before they run (`csrf::require`); the POSTs are
//! also under the auth rate limit (see the route map in `http/mod.rs`).

use std::time::Duration;

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    AppState,
    client_ip::ClientIp,
    csrf::CsrfToken,
    forms::{FormErrors, render_rejected, render_with_status},
    pages::Layout,
    render,
    session::{MaybeUser, cookie_value, safe_next, session_token},
};
use crate::{
    accounts::{
        Device, EmailTaken, LinkProblem, Login, SecretToken,
        email_change::EmailChangeRefused,
        two_factor::{CodeRefused, PENDING_LOGIN_LIFETIME, SecondFactor},
    },
    domain::{EmailAddress, NewPassword},
    error::Result,
};

/// A redirect that also sets a cookie.
pub(super) fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    ([(header::SET_COOKIE, cookie)], Redirect::to(to)).into_response()
}

/// The browser of a request, as a new session records it.
fn device(headers: &HeaderMap, client: ClientIp) -> Device<'_> {
    Device {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
        client: client.0,
    }
}

// ---- sign up ----

#[derive(Template)]
#[template(path = "auth/signup.html")]
struct SignupPage {
    layout: Layout,
    csrf_token: String,
    email: String,
    next: Option<String>,
    errors: FormErrors,
}

/// `/signup?email=…&next=…` and `/login?email=…&next=…`: the address filled in and where to
/// go afterwards (an invitation's links use both).
#[derive(Deserialize)]
pub struct AuthQuery {
    #[serde(default)]
    email: String,
    next: Option<String>,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub async fn signup_form(
    MaybeUser(user): MaybeUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<AuthQuery>,
) -> Result<Response> {
    if user.is_some() {
        return Ok(Redirect::to(safe_next(query.next.as_deref())).into_response());
    }
    Ok(render(&SignupPage {
        layout,
        csrf_token,
        email: query.email,
        next: kept_next(query.next.as_deref()),
        errors: FormErrors::new(),
    })?
    .into_response())
}

pub async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<SignupForm>,
) -> Result<Response> {
    // Signing up through an invitation's link (its token waits in a cookie, see `http::teams`).
    let invitation = link_token(&headers, state.cookies.invite_link);
    let device = device(&headers, client);
    let mut errors = FormErrors::new();
    let email = EmailAddress::parse(&form.email)
        .map_err(|problem| errors.add("email", problem.to_string()))
        .ok();
    let password = NewPassword::parse(form.password, form.email.trim())
        .map_err(|problem| errors.add("password", problem.to_string()))
        .ok();
    if let (Some(email), Some(password)) = (email, password) {
        match state
            .accounts
            .sign_up(&email, &password, device, invitation.as_ref())
            .await?
        {
            Ok(session) => {
                return Ok(redirect_with_cookie(
                    safe_next(form.next.as_deref()),
                    state.cookies.session_cookie(&session),
                ));
            }
            Err(EmailTaken) => errors.add(
                "email",
                "An account with this email already exists. Log in, or reset your password if you forgot it.",
            ),
        }
    }
    debug_assert!(!errors.is_empty());
    render_rejected(&SignupPage {
        layout,
        csrf_token,
        email: form.email,
        next: kept_next(form.next.as_deref()),
        errors,
    })
}

// ---- log in and out ----

#[derive(Template)]
#[template(path = "auth/login.html")]
struct LoginPage {
    layout: Layout,
    csrf_token: String,
    email: String,
    next: Option<String>,
    notice: Option<&'static str>,
    errors: FormErrors,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// The messages `/login?notice=…` can show (set by our own redirects).
fn login_notice(key: Option<&str>) -> Option<&'static str> {
    match key? {
        "password-reset" => Some("Your password was changed. Log in with your new password."),
        "2fa-expired" => Some("Signing in took longer than 5 minutes. Enter your password again."),
        _ => None,
    }
}

/// `next` as kept in the form: only when it is a safe same-site path.
fn kept_next(next: Option<&str>) -> Option<String> {
    next.filter(|next| safe_next(Some(next)) == *next)
        .map(str::to_owned)
}

pub async fn login_form(
    MaybeUser(user): MaybeUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<AuthQuery>,
) -> Result<Response> {
    if user.is_some() {
        return Ok(Redirect::to(safe_next(query.next.as_deref())).into_response());
    }
    Ok(render(&LoginPage {
        layout,
        csrf_token,
        email: query.email,
        next: kept_next(query.next.as_deref()),
        notice: login_notice(query.notice.as_deref()),
        errors: FormErrors::new(),
    })?
    .into_response())
}

/// The one message for an unknown email and a wrong password.
const LOGIN_REFUSED: &str = "The email or password is not right.";

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<LoginForm>,
) -> Result<Response> {
    let mut errors = FormErrors::new();
    let mut status = StatusCode::UNPROCESSABLE_ENTITY;
    let mut retry_after = None;
    match EmailAddress::parse(&form.email) {
        Err(problem) => errors.add("email", problem.to_string()),
        Ok(_) if form.password.is_empty() => errors.add("password", "Enter your password."),
        Ok(email) => match state
            .accounts
            .log_in(
                &email,
                &form.password,
                device(&headers, client),
                client.bucket(),
                kept_next(form.next.as_deref()).as_deref(),
            )
            .await?
        {
            Login::SignedIn(session) => {
                return signed_in(&state, &headers, &session, safe_next(form.next.as_deref())).await;
            }
            Login::SecondFactor(pending) => {
                let cookie = state.cookies.pending_login;
                let lifetime = Some(PENDING_LOGIN_LIFETIME);
                return Ok(redirect_with_cookie(
                    "/login/2fa",
                    state.cookies.set_cookie(cookie, pending.as_str(), lifetime),
                ));
            }
            Login::Refused => errors.set_form(LOGIN_REFUSED),
            Login::Disabled => {
                status = StatusCode::FORBIDDEN;
                errors.set_form("This account is disabled. Contact support to have it enabled again.");
            }
            Login::Locked(wait) => {
                status = StatusCode::TOO_MANY_REQUESTS;
                retry_after = Some(wait);
                errors.set_form(format!(
                    "Too many failed attempts for this email. Try again in {}.",
                    in_words(wait)
                ));
            }
        },
    }
    let mut response = render_with_status(
        status,
        &LoginPage {
            layout,
            csrf_token,
            email: form.email,
            next: kept_next(form.next.as_deref()),
            notice: None,
            errors,
        },
    )?;
    if let Some(wait) = retry_after {
        let secs = whole_seconds(wait);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    Ok(response)
}

/// The answer to a finished login: the session's cookie, and the browser's previous session
/// (another account's, or one planted) ended.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    session: &SecretToken,
    to: &str,
) -> Result<Response> {
    if let Some(previous) = session_token(headers, &state.cookies) {
        state.accounts.log_out(&previous).await?;
    }
    Ok(redirect_with_cookie(to, state.cookies.session_cookie(session)))
}

// ---- the second factor ----

#[derive(Template)]
#[template(path = "auth/login_2fa.html")]
struct SecondFactorPage {
    layout: Layout,
    csrf_token: String,
    errors: FormErrors,
}

/// Back to the password: the half-done login is over (5 minutes) or never was.
fn login_again(state: &AppState) -> Response {
    let forget = state.cookies.set_cookie(state.cookies.pending_login, "", None);
    redirect_with_cookie("/login?notice=2fa-expired", forget)
}

pub async fn second_factor_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
) -> Result<Response> {
    let pending = link_token(&headers, state.cookies.pending_login);
    let waiting = match &pending {
        Some(token) => state.accounts.pending_login(token).await?,
        None => false,
    };
    if !waiting {
        return Ok(login_again(&state));
    }
    Ok(render(&SecondFactorPage {
        layout,
        csrf_token,
        errors: FormErrors::new(),
    })?
    .into_response())
}

#[derive(Deserialize)]
pub struct SecondFactorForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    recovery_code: String,
}

pub async fn second_factor(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<SecondFactorForm>,
) -> Result<Response> {
    let Some(pending) = link_token(&headers, state.cookies.pending_login) else {
        return Ok(login_again(&state));
    };
    let factor = match (form.code.trim(), form.recovery_code.trim()) {
        ("", "") => None,
        ("", recovery) => Some(SecondFactor::RecoveryCode(recovery)),
        (code, _) => Some(SecondFactor::Code(code)),
    };
    // A message goes under the field that was used.
    let field = if matches!(factor, Some(SecondFactor::RecoveryCode(_))) {
        "recovery_code"
    } else {
        "code"
    };
    let mut errors = FormErrors::new();
    let mut status = StatusCode::UNPROCESSABLE_ENTITY;
    match factor {
        None => errors.add(
            "code",
            "Enter the 6-digit code from your app, or a recovery code.",
        ),
        Some(factor) => {
            let device = device(&headers, client);
            match state
                .accounts
                .finish_login(&pending, factor, device, client.bucket())
                .await?
            {
                Ok((session, next)) => {
                    let mut response =
                        signed_in(&state, &headers, &session, safe_next(next.as_deref())).await?;
                    let forget = state.cookies.set_cookie(state.cookies.pending_login, "", None);
                    response.headers_mut().append(header::SET_COOKIE, forget);
                    return Ok(response);
                }
                Err(CodeRefused::NothingPending) => return Ok(login_again(&state)),
                Err(CodeRefused::Wrong) => errors.add(field, "That code is not right, or was used already."),
                Err(CodeRefused::Locked(wait)) => {
                    status = StatusCode::TOO_MANY_REQUESTS;
                    errors.set_form(format!("Too many wrong codes. Try again in {}.", in_words(wait)));
                    let mut page = render_with_status(
                        status,
                        &SecondFactorPage {
                            layout,
                            csrf_token,
                            errors,
                        },
                    )?;
                    page.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(wait).max(1)));
                    return Ok(page);
                }
            }
        }
    }
    render_with_status(
        status,
        &SecondFactorPage {
            layout,
            csrf_token,
            errors,
        },
    )
}

/// `wait` rounded up to whole seconds (what `Retry-After` and the message say).
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// "3 seconds", "1 minute", "15 minutes".
fn in_words(wait: Duration) -> String {
    let secs = whole_seconds(wait).max(1);
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else {
        (secs.div_ceil(60), "minute")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    if let Some(token) = session_token(&headers, &state.cookies) {
        state.accounts.log_out(&token).await?;
    }
    Ok(redirect_with_cookie("/", state.cookies.remove_session_cookie()))
}

// ---- emailed links ----
//
// An emailed link's token leaves the URL at once (SPEC): the first `GET /path?token=…` puts
// the token in a short-lived HttpOnly cookie and answers 303 to `/path`, so the token reaches
// no access log, Referer or browser history. The page and its form read the cookie. The
// routes also send `Referrer-Policy: no-referrer` (see `http/mod.rs`).

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// How long a link's token waits in its cookie for the page to be used.
pub(super) const LINK_COOKIE_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The 303 that takes the token out of the URL, when there is one in it. A token that is not
/// even well formed clears the cookie, so the page says the link is not valid rather than
/// using an older link's token.
fn token_out_of_url(
    state: &AppState,
    path: &str,
    cookie: &'static str,
    query: &TokenQuery,
) -> Option<Response> {
    let token = query.token.as_deref()?;
    let value = SecretToken::parse(token).map(|token| {
        state
            .cookies
            .set_cookie(cookie, token.as_str(), Some(LINK_COOKIE_LIFETIME))
    });
    Some(redirect_with_cookie(
        path,
        value.unwrap_or_else(|| state.cookies.set_cookie(cookie, "", None)),
    ))
}

/// The token the link's cookie holds.
pub(super) fn link_token(headers: &HeaderMap, cookie: &str) -> Option<SecretToken> {
    cookie_value(headers, cookie).and_then(SecretToken::parse)
}

/// `response` with the link's cookie removed: the token has been used.
pub(super) fn forget_link(state: &AppState, cookie: &'static str, mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::SET_COOKIE, state.cookies.set_cookie(cookie, "", None));
    response
}

/// The page of an emailed link that does not work (any kind of link).
#[derive(Template)]
#[template(path = "auth/link_page.html")]
pub(super) struct LinkPage {
    pub layout: Layout,
    pub title: &'static str,
    pub message: String,
    pub action_href: &'static str,
    pub action_label: &'static str,
}

/// The 4xx page of a link that no longer works: 410 when it was used or has expired, 400 when
/// it was never valid.
fn link_problem(layout: Layout, problem: LinkProblem, purpose: &'static str) -> Result<Response> {
    let (status, title) = match problem {
        LinkProblem::Used => (StatusCode::GONE, "This link was already used"),
        LinkProblem::Expired => (StatusCode::GONE, "This link has expired"),
        LinkProblem::Invalid => (StatusCode::BAD_REQUEST, "This link is not valid"),
    };
    let (message, action_href, action_label) = match purpose {
        "reset" => (
            "Password reset links work once and for one hour. Ask for a new one and use the latest email.",
            "/forgot-password",
            "Send me a new link",
        ),
        "email" => (
            "Email change links work once: the confirmation for 24 hours, the link that restores the old address for 7 days. Start again from your settings.",
            "/settings",
            "Go to settings",
        ),
        _ => (
            "Verification links work once and for 24 hours. Log in and ask for a new one from your settings.",
            "/settings",
            "Go to settings",
        ),
    };
    let message = message.to_owned();
    render_with_status(
        status,
        &LinkPage {
            layout,
            title,
            message,
            action_href,
            action_label,
        },
    )
}

#[derive(Template)]
#[template(path = "auth/email_verified.html")]
struct EmailVerifiedPage {
    layout: Layout,
}

pub async fn verify_email(
    State(state): State<AppState>,
    layout: Layout,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response> {
    let cookie = state.cookies.verify_link;
    if let Some(redirect) = token_out_of_url(&state, "/verify-email", cookie, &query) {
        return Ok(redirect);
    }
    let page = match state
        .accounts
        .verify_email(link_token(&headers, cookie).as_ref())
        .await?
    {
        Ok(()) => {
            // The layout was read before the update: show the user as verified now.
            let mut layout = layout;
            if let Some(user) = &mut layout.user {
                user.email_verified = true;
            }
            render(&EmailVerifiedPage { layout })?.into_response()
        }
        Err(problem) => link_problem(layout, problem, "verify")?,
    };
    Ok(forget_link(&state, cookie, page))
}

// ---- forgot and reset ----

#[derive(Template)]
#[template(path = "auth/forgot_password.html")]
struct ForgotPasswordPage {
    layout: Layout,
    csrf_token: String,
    email: String,
    /// The request went out: say so, the same way whether the account exists or not.
    sent: bool,
    errors: FormErrors,
}

#[derive(Deserialize)]
pub struct EmailForm {
    #[serde(default)]
    email: String,
}

pub async fn forgot_password_form(layout: Layout, CsrfToken(csrf_token): CsrfToken) -> Result<Html<String>> {
    render(&ForgotPasswordPage {
        layout,
        csrf_token,
        email: String::new(),
        sent: false,
        errors: FormErrors::new(),
    })
}

pub async fn forgot_password(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<EmailForm>,
) -> Result<Response> {
    match EmailAddress::parse(&form.email) {
        Ok(email) => {
            state.accounts.request_password_reset(&email).await?;
            Ok(render(&ForgotPasswordPage {
                layout,
                csrf_token,
                email: email.to_string(),
                sent: true,
                errors: FormErrors::new(),
            })?
            .into_response())
        }
        Err(problem) => render_rejected(&ForgotPasswordPage {
            layout,
            csrf_token,
            email: form.email,
            sent: false,
            errors: FormErrors::new().with("email", problem.to_string()),
        }),
    }
}

#[derive(Template)]
#[template(path = "auth/reset_password.html")]
struct ResetPasswordPage {
    layout: Layout,
    csrf_token: String,
    email: String,
    errors: FormErrors,
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    password: String,
}

pub async fn reset_password_form(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response> {
    let cookie = state.cookies.reset_link;
    if let Some(redirect) = token_out_of_url(&state, "/reset-password", cookie, &query) {
        return Ok(redirect);
    }
    let token = link_token(&headers, cookie);
    match state.accounts.reset_link_owner(token.as_ref()).await? {
        Ok(email) => Ok(render(&ResetPasswordPage {
            layout,
            csrf_token,
            email,
            errors: FormErrors::new(),
        })?
        .into_response()),
        Err(problem) => Ok(forget_link(
            &state,
            cookie,
            link_problem(layout, problem, "reset")?,
        )),
    }
}

pub async fn reset_password(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Result<Response> {
    let cookie = state.cookies.reset_link;
    let token = link_token(&headers, cookie);
    let email = match state.accounts.reset_link_owner(token.as_ref()).await? {
        Ok(email) => email,
        Err(problem) => {
            return Ok(forget_link(
                &state,
                cookie,
                link_problem(layout, problem, "reset")?,
            ));
        }
    };
    let password = match NewPassword::parse(form.password, &email) {
        Ok(password) => password,
        Err(problem) => {
            return render_rejected(&ResetPasswordPage {
                layout,
                csrf_token,
                email,
                errors: FormErrors::new().with("password", problem.to_string()),
            });
        }
    };
    let page = match state.accounts.reset_password(token.as_ref(), &password).await? {
        // Every session of the user ended, this browser's too.
        Ok(()) => redirect_with_cookie(
            "/login?notice=password-reset",
            state.cookies.remove_session_cookie(),
        ),
        Err(problem) => link_problem(layout, problem, "reset")?,
    };
    Ok(forget_link(&state, cookie, page))
}

// ---- email change (see `accounts::email_change`) ----

pub async fn confirm_email(
    State(state): State<AppState>,
    layout: Layout,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response> {
    let cookie = state.cookies.change_link;
    if let Some(redirect) = token_out_of_url(&state, "/confirm-email", cookie, &query) {
        return Ok(redirect);
    }
    let token = link_token(&headers, cookie);
    let page = match state.accounts.confirm_email_change(token.as_ref()).await? {
        Ok(address) => render(&LinkPage {
            layout,
            title: "Your email address is changed",
            message: format!("Sign in with {address} from now on. Your old address was told, with a link to undo the change."),
            action_href: "/settings",
            action_label: "Go to settings",
        })?
        .into_response(),
        Err(refused) => email_change_problem(layout, refused)?,
    };
    Ok(forget_link(&state, cookie, page))
}

pub async fn revert_email(
    State(state): State<AppState>,
    layout: Layout,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response> {
    let cookie = state.cookies.revert_link;
    if let Some(redirect) = token_out_of_url(&state, "/revert-email", cookie, &query) {
        return Ok(redirect);
    }
    let token = link_token(&headers, cookie);
    let mut page = match state.accounts.revert_email_change(token.as_ref()).await? {
        Ok(address) => render(&LinkPage {
            layout,
            title: "Your email address is restored",
            message: format!(
                "The account's address is {address} again, and every session was signed out. If you did not change it, reset your password now."
            ),
            action_href: "/forgot-password",
            action_label: "Reset my password",
        })?
        .into_response(),
        Err(refused) => email_change_problem(layout, refused)?,
    };
    if page.status().is_success() {
        // This browser's session ended with every other.
        page.headers_mut()
            .append(header::SET_COOKIE, state.cookies.remove_session_cookie());
    }
    Ok(forget_link(&state, cookie, page))
}

/// The page of an email change link that did not change the address.
fn email_change_problem(layout: Layout, refused: EmailChangeRefused) -> Result<Response> {
    match refused {
        EmailChangeRefused::Link(problem) => link_problem(layout, problem, "email"),
        _ => render_with_status(
            StatusCode::CONFLICT,
            &LinkPage {
                layout,
                title: "That address belongs to another account now",
                message: "Another account took this address before the link was followed, so the address was not changed. Choose another one in your settings.".to_owned(),
                action_href: "/settings",
                action_label: "Go to settings",
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_said_in_words() {
        assert_eq!(in_words(Duration::from_millis(200)), "1 second");
        assert_eq!(in_words(Duration::from_secs(8)), "8 seconds");
        assert_eq!(in_words(Duration::from_secs(60)), "1 minute");
        assert_eq!(in_words(Duration::from_secs(61)), "2 minutes");
        assert_eq!(in_words(Duration::from_secs(900)), "15 minutes");
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(login_notice(Some("password-reset")).is_some());
        assert_eq!(login_notice(Some("<script>")), None);
        assert_eq!(login_notice(None), None);
    }
}

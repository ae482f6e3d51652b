//! Pages behind login: the dashboard and the account settings. Every handler takes
//! [`CurrentUser`], and the route map also puts these routes behind it.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AppState,
    auth::LinkPage,
    billing,
    client_ip::ClientIp,
    csrf::CsrfToken,
    forms::{FormErrors, render_rejected, render_with_status},
    pages::Layout,
    render,
    session::CurrentUser,
};
use crate::{
    accounts::{
        PasswordRefused,
        deletion::DeletionRefused,
        email_change::EmailChangeRefused,
        export::Download,
        security::{self, SessionRow},
        two_factor::{CodeRefused, Enrolment},
    },
    domain::{EmailAddress, NewPassword, Role},
    error::{AppError, Result},
};

#[derive(Template)]
#[template(path = "account/dashboard.html")]
struct DashboardPage {
    layout: Layout,
    team_name: String,
    role: Role,
    /// The plan the team has paid access to, or "Free".
    plan: String,
}

pub async fn dashboard(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
) -> Result<Html<String>> {
    let now = time::OffsetDateTime::now_utc();
    let plan = match &user.session.subscription {
        Some(subscription) if subscription.entitled(state.config.grace_period(), now) => {
            billing::plan_in_words(subscription, &state.config)
        }
        _ => "Free".to_owned(),
    };
    render(&DashboardPage {
        layout,
        team_name: user.session.team_name,
        role: user.session.role,
        plan,
    })
}

#[derive(Template)]
#[template(path = "account/settings.html")]
struct SettingsPage {
    layout: Layout,
    csrf_token: String,
    email: String,
    email_verified: bool,
    /// The user signs in with a second factor.
    two_factor: bool,
    notice: Option<&'static str>,
    /// The new address typed in the email change form.
    typed_email: String,
    errors: FormErrors,
    /// Why the account was not deleted (its form shares field names with the others).
    delete_error: Option<String>,
}

impl SettingsPage {
    fn new(layout: Layout, csrf_token: String, user: CurrentUser) -> Self {
        Self {
            layout,
            csrf_token,
            email: user.session.email,
            email_verified: user.session.email_verified,
            two_factor: user.session.two_factor,
            notice: None,
            typed_email: String::new(),
            errors: FormErrors::new(),
            delete_error: None,
        }
    }
}

#[derive(Deserialize)]
pub struct SettingsQuery {
    notice: Option<String>,
}

fn settings_notice(key: Option<&str>) -> Option<&'static str> {
    match key? {
        "password-changed" => Some("Your password was changed. Your other devices were signed out."),
        "verification-sent" => Some("We sent you a new verification link. It works for 24 hours."),
        "verification-recent" => Some(
            "A verification link was sent recently. Check your inbox and spam folder, or try again later.",
        ),
        "already-verified" => Some("Your email address is already verified."),
        "export-started" => Some(
            "We are preparing your data export and will email you a link to it (usually within a minute).",
        ),
        "email-change-sent" => Some(
            "We sent a confirmation link to your new address. Your address changes when you follow it (within 24 hours).",
        ),
        _ => None,
    }
}

pub async fn settings(
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<SettingsQuery>,
) -> Result<Html<String>> {
    render(&SettingsPage {
        notice: settings_notice(query.notice.as_deref()),
        ..SettingsPage::new(layout, csrf_token, user)
    })
}

#[derive(Deserialize)]
pub struct ChangePasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<ChangePasswordForm>,
) -> Result<Response> {
    let mut errors = FormErrors::new();
    if form.current_password.is_empty() {
        errors.add("current_password", "Enter your current password.");
    }
    match NewPassword::parse(form.new_password, &user.session.email) {
        Err(problem) => errors.add("new_password", problem.to_string()),
        Ok(new_password) if errors.is_empty() => {
            let changed = state
                .accounts
                .change_password(
                    &user.session,
                    &user.token,
                    &form.current_password,
                    &new_password,
                    client.bucket(),
                )
                .await?;
            match changed {
                Ok(()) => return Ok(Redirect::to("/settings?notice=password-changed").into_response()),
                Err(PasswordRefused::WrongPassword) => {
                    errors.add("current_password", "This is not your current password.");
                }
                Err(PasswordRefused::Locked(wait)) => return Err(locked(wait)),
            }
        }
        Ok(_) => {}
    }
    render_rejected(&SettingsPage {
        errors,
        ..SettingsPage::new(layout, csrf_token, user)
    })
}

/// 429 for a current password refused while its account's backoff runs.
fn locked(wait: std::time::Duration) -> AppError {
    let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    AppError::TooManyRequests { retry_after_secs }
}

#[derive(Deserialize)]
pub struct ChangeEmailForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// `POST /settings/email`: emails a confirmation link to the new address.
pub async fn change_email(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<ChangeEmailForm>,
) -> Result<Response> {
    let mut errors = FormErrors::new();
    let mut status = StatusCode::UNPROCESSABLE_ENTITY;
    let email = EmailAddress::parse(&form.email)
        .map_err(|problem| errors.add("email", problem.to_string()))
        .ok();
    if form.password.is_empty() {
        errors.add("password", "Enter your current password.");
    }
    if let Some(email) = email.filter(|_| errors.is_empty()) {
        let requested = state
            .accounts
            .request_email_change(&user.session, &form.password, &email, client.bucket())
            .await?;
        match requested {
            Ok(()) => return Ok(Redirect::to("/settings?notice=email-change-sent").into_response()),
            Err(EmailChangeRefused::Password(PasswordRefused::WrongPassword)) => {
                errors.add("password", "This is not your current password.");
            }
            Err(EmailChangeRefused::Password(PasswordRefused::Locked(wait))) => return Err(locked(wait)),
            Err(EmailChangeRefused::Unchanged) => errors.add("email", "This is your email address already."),
            Err(EmailChangeRefused::Taken) => errors.add("email", "Another account has this address."),
            Err(EmailChangeRefused::Capped) => {
                status = StatusCode::TOO_MANY_REQUESTS;
                errors.add(
                    "email",
                    "A confirmation went to this address a moment ago. Try again in a minute.",
                );
            }
            Err(EmailChangeRefused::Link(_)) => unreachable!("a request follows no link"),
        }
    }
    let typed_email = form.email;
    render_with_status(
        status,
        &SettingsPage {
            typed_email,
            errors,
            ..SettingsPage::new(layout, csrf_token, user)
        },
    )
}

pub async fn resend_verification(State(state): State<AppState>, user: CurrentUser) -> Result<Redirect> {
    let notice = if user.session.email_verified {
        "already-verified"
    } else if state.accounts.resend_verification(&user.session).await? {
        "verification-sent"
    } else {
        "verification-recent"
    };
    Ok(Redirect::to(&format!("/settings?notice={notice}")))
}

// ---- sessions and the security log ----

/// Entries of the security log `/settings/sessions` shows.
const SECURITY_LOG_SHOWN: i64 = 50;

#[derive(Template)]
#[template(path = "account/sessions.html")]
struct SessionsPage {
    layout: Layout,
    csrf_token: String,
    notice: Option<&'static str>,
    sessions: Vec<SessionRow>,
    log: Vec<security::Entry>,
}

fn sessions_notice(key: Option<&str>) -> Option<&'static str> {
    match key? {
        "revoked" => Some("That session is signed out."),
        "revoked-others" => Some("Every other session is signed out."),
        _ => None,
    }
}

pub async fn sessions(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<SettingsQuery>,
) -> Result<Html<String>> {
    let user_id = user.session.user_id;
    render(&SessionsPage {
        layout,
        csrf_token,
        notice: sessions_notice(query.notice.as_deref()),
        sessions: security::sessions_of(&state.db, user_id, &user.token).await?,
        log: security::recent(&state.db, user_id, SECURITY_LOG_SHOWN).await?,
    })
}

/// `POST /settings/sessions/{id}/revoke`: ends one of the user's sessions; their own current
/// one signs them out here.
pub async fn revoke_session(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    let revoked = security::revoke(&state.db, user.session.user_id, id, &user.token, client.0).await?;
    match revoked {
        None => Err(AppError::NotFound),
        Some(true) => Ok((
            [(header::SET_COOKIE, state.cookies.remove_session_cookie())],
            Redirect::to("/login"),
        )
            .into_response()),
        Some(false) => Ok(Redirect::to("/settings/sessions?notice=revoked").into_response()),
    }
}

pub async fn revoke_other_sessions(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
) -> Result<Redirect> {
    security::revoke_others(&state.db, user.session.user_id, &user.token, client.0).await?;
    Ok(Redirect::to("/settings/sessions?notice=revoked-others"))
}

// ---- two-factor sign-in ----

#[derive(Template)]
#[template(path = "account/two_factor.html")]
struct TwoFactorPage {
    layout: Layout,
    csrf_token: String,
    /// While enrolling: the QR code and URI. `None`: 2FA is on.
    enrolment: Option<Enrolment>,
    /// Just turned on: the recovery codes, shown this once.
    recovery_codes: Vec<String>,
    /// Why the user was sent here (their team requires 2FA).
    notice: Option<&'static str>,
    errors: FormErrors,
}

impl TwoFactorPage {
    async fn new(
        state: &AppState,
        user: &CurrentUser,
        layout: Layout,
        csrf_token: String,
        errors: FormErrors,
    ) -> Result<Self> {
        Ok(Self {
            layout,
            csrf_token,
            enrolment: state.accounts.begin_two_factor(&user.session).await?,
            recovery_codes: Vec::new(),
            notice: None,
            errors,
        })
    }
}

pub async fn two_factor(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<SettingsQuery>,
) -> Result<Html<String>> {
    let mut page = TwoFactorPage::new(&state, &user, layout, csrf_token, FormErrors::new()).await?;
    if query.notice.as_deref() == Some("team-requires-2fa") {
        page.notice = Some("Your team requires two-factor sign-in: turn it on to open its pages.");
    }
    render(&page)
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
}

pub async fn enable_two_factor(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<CodeForm>,
) -> Result<Response> {
    match state
        .accounts
        .enable_two_factor(&user.session, &form.code, client.0, client.bucket())
        .await?
    {
        Ok(recovery_codes) => Ok(render(&TwoFactorPage {
            layout,
            csrf_token,
            enrolment: None,
            recovery_codes,
            notice: None,
            errors: FormErrors::new(),
        })?
        .into_response()),
        Err(CodeRefused::Wrong) => {
            let errors = FormErrors::new().with(
                "code",
                "That code is not right. Check the time on your phone and try the next one.",
            );
            render_rejected(&TwoFactorPage::new(&state, &user, layout, csrf_token, errors).await?)
        }
        Err(CodeRefused::Locked(wait)) => Err(locked(wait)),
        Err(CodeRefused::NothingPending) => Ok(Redirect::to("/settings/2fa").into_response()),
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    password: String,
}

pub async fn disable_two_factor(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<PasswordForm>,
) -> Result<Response> {
    match state
        .accounts
        .disable_two_factor(&user.session, &form.password, client.bucket())
        .await?
    {
        Ok(()) => Ok(Redirect::to("/settings").into_response()),
        Err(PasswordRefused::WrongPassword) => {
            let errors = FormErrors::new().with("password", "This is not your current password.");
            render_rejected(&TwoFactorPage::new(&state, &user, layout, csrf_token, errors).await?)
        }
        Err(PasswordRefused::Locked(wait)) => Err(locked(wait)),
    }
}

// ---- data export ----

pub async fn request_export(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
) -> Result<Redirect> {
    state
        .accounts
        .request_export(user.session.user_id, client.0)
        .await?;
    Ok(Redirect::to("/settings?notice=export-started"))
}

/// `GET /settings/export/{id}`: the JSON document, for its user only (anyone else: 404).
pub async fn download_export(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| AppError::NotFound)?;
    match state.accounts.export(user.session.user_id, id).await? {
        None => Err(AppError::NotFound),
        Some(Download::Pending) => Err(AppError::Conflict(
            "Your export is still being prepared: the email comes when it is ready.".to_owned(),
        )),
        Some(Download::Expired) => render_with_status(
            StatusCode::GONE,
            &LinkPage {
                layout,
                title: "This export has expired",
                message: "Exports can be downloaded for 24 hours. Ask for a new one in your settings."
                    .to_owned(),
                action_href: "/settings",
                action_label: "Go to settings",
            },
        ),
        Some(Download::Ready(document)) => Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"data-export.json\"",
                ),
            ],
            document.to_string(),
        )
            .into_response()),
    }
}

// ---- deletion ----

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /settings/delete`: deletes the account (see `accounts::deletion`), 303 `/`.
pub async fn delete_account(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<DeleteForm>,
) -> Result<Response> {
    let deleted = state
        .accounts
        .delete_account(
            &user.session,
            &form.password,
            &form.confirm,
            client.bucket(),
            state.stripe.as_ref(),
        )
        .await?;
    let (status, message) = match deleted {
        Ok(()) => {
            let gone = state.cookies.remove_session_cookie();
            return Ok(([(header::SET_COOKIE, gone)], Redirect::to("/")).into_response());
        }
        Err(DeletionRefused::Password(PasswordRefused::Locked(wait))) => return Err(locked(wait)),
        Err(DeletionRefused::Password(PasswordRefused::WrongPassword)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "This is not your current password: nothing was deleted.".to_owned(),
        ),
        Err(DeletionRefused::NotConfirmed) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Type your email address exactly to confirm: nothing was deleted.".to_owned(),
        ),
        Err(DeletionRefused::LastOwner(team)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "You are the last owner of {team}, which has other members: make one of them an owner, or remove them, on its team page first. Nothing was deleted."
            ),
        ),
        Err(DeletionRefused::Stripe(error)) => {
            tracing::warn!(%error, "account not deleted: Stripe did not cancel a subscription");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Your account was not deleted: our payment provider did not answer while we canceled your team's subscription. Please try again in a few minutes.".to_owned(),
            )
        }
    };
    render_with_status(
        status,
        &SettingsPage {
            delete_error: Some(message),
            ..SettingsPage::new(layout, csrf_token, user)
        },
    )
}

//! Pages behind login: the dashboard and the account settings. Every handler takes
//! [`CurrentUser`], and the route map also puts these routes behind it.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::header,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AppState, billing,
    client_ip::ClientIp,
    csrf::CsrfToken,
    forms::{FormErrors, render_rejected},
    pages::Layout,
    render,
    session::CurrentUser,
};
use crate::{
    accounts::{
        PasswordChangeRefused,
        security::{self, SessionRow},
    },
    domain::{NewPassword, Role},
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
    notice: Option<&'static str>,
    errors: FormErrors,
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
        layout,
        csrf_token,
        email: user.session.email,
        email_verified: user.session.email_verified,
        notice: settings_notice(query.notice.as_deref()),
        errors: FormErrors::new(),
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
                Err(PasswordChangeRefused::WrongPassword) => {
                    errors.add("current_password", "This is not your current password.");
                }
                Err(PasswordChangeRefused::Locked(wait)) => {
                    let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    return Err(AppError::TooManyRequests { retry_after_secs });
                }
            }
        }
        Ok(_) => {}
    }
    render_rejected(&SettingsPage {
        layout,
        csrf_token,
        email: user.session.email,
        email_verified: user.session.email_verified,
        notice: None,
        errors,
    })
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

//! Teams (SPEC, "Teams (B2B)"): the user's teams, creating and switching; the current team's
//! page with its members and invitations and the forms each role may use; the invitation
//! link's page; the audit log.
//!
//! Handlers only parse and render: who may do what is decided in `accounts` (on the team as
//! it is once its lock is held), and answered here as 403 (not allowed), 404 (no such member
//! or invitation in this team) or 422 (the last owner).

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AppState,
    auth::{LINK_COOKIE_LIFETIME, LinkPage, forget_link, link_token, redirect_with_cookie},
    client_ip::ClientIp,
    csrf::CsrfToken,
    forms::{FormErrors, render_rejected, render_with_status},
    pages::Layout,
    render,
    session::{CurrentUser, MaybeUser},
};
use crate::{
    accounts::{
        SecretToken,
        audit::{self, Entry},
        invitations::{self, AcceptRefused, Invitation, InviteRefused, Inviter, LinkProblem, Pending},
        teams::{self, Member, MyTeam, Refused},
    },
    domain::{EmailAddress, Role, TeamName},
    error::{AppError, Result},
};

#[derive(Template)]
#[template(path = "teams/teams.html")]
struct TeamsPage {
    layout: Layout,
    csrf_token: String,
    teams: Vec<MyTeam>,
    current: Uuid,
    /// What the user typed as the new team's name.
    typed_name: String,
    errors: FormErrors,
}

async fn teams_page(
    state: &AppState,
    user: &CurrentUser,
    layout: Layout,
    csrf_token: String,
    typed_name: String,
    errors: FormErrors,
) -> Result<TeamsPage> {
    Ok(TeamsPage {
        layout,
        csrf_token,
        teams: teams::of_user(&state.db, user.session.user_id).await?,
        current: user.session.team_id,
        typed_name,
        errors,
    })
}

pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
) -> Result<Html<String>> {
    render(
        &teams_page(
            &state,
            &user,
            layout,
            csrf_token,
            String::new(),
            FormErrors::new(),
        )
        .await?,
    )
}

#[derive(Deserialize)]
pub struct NewTeamForm {
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<NewTeamForm>,
) -> Result<Response> {
    match TeamName::parse(&form.name) {
        Ok(name) => {
            teams::create(&state.db, &user.token, user.session.user_id, &name).await?;
            Ok(Redirect::to("/team").into_response())
        }
        Err(problem) => {
            let errors = FormErrors::new().with("name", problem);
            render_rejected(&teams_page(&state, &user, layout, csrf_token, form.name, errors).await?)
        }
    }
}

#[derive(Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    team_id: String,
}

pub async fn switch(
    State(state): State<AppState>,
    user: CurrentUser,
    Form(form): Form<SwitchForm>,
) -> Result<Redirect> {
    let team_id = Uuid::parse_str(form.team_id.trim())
        .map_err(|_| AppError::BadRequest("team_id is not a team's id.".to_owned()))?;
    if !teams::switch(&state.db, &user.token, user.session.user_id, team_id).await? {
        return Err(AppError::Forbidden(
            "You are not a member of that team.".to_owned(),
        ));
    }
    Ok(Redirect::to("/dashboard"))
}

// ---- the current team ----

#[derive(Template)]
#[template(path = "teams/team.html")]
struct TeamPage {
    layout: Layout,
    csrf_token: String,
    team_name: String,
    your_role: Role,
    /// Everyone but the last owner.
    may_leave: bool,
    /// The team requires two-factor sign-in of its members.
    requires_2fa: bool,
    members: Vec<MemberRow>,
    /// Owners and admins only.
    invitations: Vec<Pending>,
    /// The roles the viewer may invite as (none: no invitation form).
    invite_roles: Vec<Role>,
    typed_email: String,
    typed_role: String,
    errors: FormErrors,
}

/// A member with what the viewer may do to them.
struct MemberRow {
    member: Member,
    is_you: bool,
    /// The roles the viewer may give them (their own among them), empty if none.
    role_choices: Vec<Role>,
    removable: bool,
}

/// What the team page shows again after a refused form.
#[derive(Default)]
struct TeamForm {
    typed_email: String,
    typed_role: String,
    errors: FormErrors,
}

async fn team_page(
    state: &AppState,
    user: &CurrentUser,
    layout: Layout,
    csrf_token: String,
    form: TeamForm,
) -> Result<TeamPage> {
    let session = &user.session;
    let viewer = session.role;
    let members = teams::members(&state.db, session.team_id).await?;
    let owners = members.iter().filter(|m| m.role == Role::Owner).count();
    // The last owner keeps the role: no form offers to change it.
    let last_owner = |member: &Member| member.role == Role::Owner && owners == 1;
    let members = members
        .into_iter()
        .map(|member| {
            let is_you = member.user_id == session.user_id;
            let role_choices = if viewer.may_change_role(member.role, member.role) && !last_owner(&member) {
                Role::ALL
                    .into_iter()
                    .filter(|to| viewer.may_change_role(member.role, *to))
                    .collect()
            } else {
                Vec::new()
            };
            MemberRow {
                removable: !is_you && viewer.may_remove(member.role),
                member,
                is_you,
                role_choices,
            }
        })
        .collect();
    let invitations = if viewer.may_manage_invitations() {
        invitations::pending(&state.db, session.team_id).await?
    } else {
        Vec::new()
    };
    Ok(TeamPage {
        layout,
        csrf_token,
        team_name: session.team_name.clone(),
        your_role: viewer,
        may_leave: !(viewer == Role::Owner && owners == 1),
        requires_2fa: session.team_requires_2fa,
        members,
        invitations,
        invite_roles: Role::ALL
            .into_iter()
            .filter(|role| viewer.may_invite(*role))
            .collect(),
        typed_email: form.typed_email,
        typed_role: if form.typed_role.is_empty() {
            Role::Member.as_str().to_owned()
        } else {
            form.typed_role
        },
        errors: form.errors,
    })
}

pub async fn team(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
) -> Result<Html<String>> {
    render(&team_page(&state, &user, layout, csrf_token, TeamForm::default()).await?)
}

/// The team page again with `status` and a message for the whole form.
async fn team_refused(
    state: &AppState,
    user: &CurrentUser,
    layout: Layout,
    csrf_token: String,
    status: StatusCode,
    message: &str,
) -> Result<Response> {
    let mut errors = FormErrors::new();
    errors.set_form(message);
    let form = TeamForm {
        errors,
        ..TeamForm::default()
    };
    render_with_status(status, &team_page(state, user, layout, csrf_token, form).await?)
}

/// An id from the path; anything else is no member or invitation of this team.
fn path_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| AppError::NotFound)
}

/// A refusal of `accounts` as the client sees it.
fn refused(refused: Refused) -> AppError {
    match refused {
        Refused::NotFound => AppError::NotFound,
        Refused::NotAllowed | Refused::LastOwner => {
            AppError::Forbidden("Your role in this team does not allow that.".to_owned())
        }
    }
}

const LAST_OWNER: &str = "A team needs an owner: make another member an owner first.";

#[derive(Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

pub async fn invite(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<InviteForm>,
) -> Result<Response> {
    if !user.session.role.may_manage_invitations() {
        return Err(refused(Refused::NotAllowed));
    }
    let mut errors = FormErrors::new();
    let email = EmailAddress::parse(&form.email)
        .map_err(|problem| errors.add("email", problem.to_string()))
        .ok();
    let role = Role::parse(&form.role)
        .map_err(|_| {
            errors.add(
                "role",
                "Choose a role: member or admin (or owner, if you are one).",
            )
        })
        .ok();
    let mut status = StatusCode::UNPROCESSABLE_ENTITY;
    if let (Some(email), Some(role)) = (email, role) {
        if !user.session.role.may_invite(role) {
            return Err(AppError::Forbidden(
                "Only an owner can invite an owner.".to_owned(),
            ));
        }
        let inviter = Inviter {
            actor: user.actor(client),
            team_id: user.session.team_id,
            team_name: &user.session.team_name,
        };
        match state.accounts.invite(inviter, &email, role).await? {
            Ok(()) => return Ok(Redirect::to("/team").into_response()),
            Err(InviteRefused::AlreadyMember) => {
                errors.add("email", "This address is already a member of the team.")
            }
            Err(InviteRefused::Capped) => {
                status = StatusCode::TOO_MANY_REQUESTS;
                errors.add(
                    "email",
                    "An email went to this address a moment ago. Try again in a minute.",
                );
            }
            Err(InviteRefused::Team(refusal)) => return Err(refused(refusal)),
        }
    }
    let form = TeamForm {
        typed_email: form.email,
        typed_role: form.role,
        errors,
    };
    render_with_status(status, &team_page(&state, &user, layout, csrf_token, form).await?)
}

pub async fn resend(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = path_id(&id)?;
    let inviter = Inviter {
        actor: user.actor(client),
        team_id: user.session.team_id,
        team_name: &user.session.team_name,
    };
    match state.accounts.resend_invitation(inviter, id).await? {
        Ok(()) => Ok(Redirect::to("/team").into_response()),
        Err(InviteRefused::Capped) => {
            let message = "An email went to this address a moment ago. Try again in a minute.";
            team_refused(
                &state,
                &user,
                layout,
                csrf_token,
                StatusCode::TOO_MANY_REQUESTS,
                message,
            )
            .await
        }
        Err(InviteRefused::Team(refusal)) => Err(refused(refusal)),
        Err(InviteRefused::AlreadyMember) => Err(AppError::NotFound),
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id = path_id(&id)?;
    state
        .accounts
        .revoke_invitation(user.actor(client), user.session.team_id, id)
        .await?
        .map_err(refused)?;
    Ok(Redirect::to("/team"))
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(user_id): Path<String>,
    Form(form): Form<RoleForm>,
) -> Result<Response> {
    let user_id = path_id(&user_id)?;
    let Ok(role) = Role::parse(&form.role) else {
        let message = "A role is owner, admin or member.";
        return team_refused(
            &state,
            &user,
            layout,
            csrf_token,
            StatusCode::UNPROCESSABLE_ENTITY,
            message,
        )
        .await;
    };
    let outcome =
        teams::change_role(&state.db, user.actor(client), user.session.team_id, user_id, role).await?;
    answer(&state, &user, layout, csrf_token, outcome, "/team").await
}

pub async fn remove(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(user_id): Path<String>,
) -> Result<Response> {
    let user_id = path_id(&user_id)?;
    let outcome = teams::remove(&state.db, user.actor(client), user.session.team_id, user_id).await?;
    let to = if user_id == user.session.user_id {
        "/teams"
    } else {
        "/team"
    };
    answer(&state, &user, layout, csrf_token, outcome, to).await
}

pub async fn leave(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
) -> Result<Response> {
    let me = user.session.user_id;
    let outcome = teams::remove(&state.db, user.actor(client), user.session.team_id, me).await?;
    answer(&state, &user, layout, csrf_token, outcome, "/teams").await
}

/// The answer to a change of the team's members: 303 to `to`; the team page again with 422
/// for the last owner; 403 or 404 for the rest.
async fn answer(
    state: &AppState,
    user: &CurrentUser,
    layout: Layout,
    csrf_token: String,
    outcome: std::result::Result<(), Refused>,
    to: &str,
) -> Result<Response> {
    match outcome {
        Ok(()) => Ok(Redirect::to(to).into_response()),
        Err(Refused::LastOwner) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            team_refused(state, user, layout, csrf_token, status, LAST_OWNER).await
        }
        Err(refusal) => Err(refused(refusal)),
    }
}

#[derive(Deserialize)]
pub struct SecurityForm {
    /// `on` when the box is ticked; absent otherwise.
    require_2fa: Option<String>,
}

/// `POST /team/security`: the owner requires (or stops requiring) two-factor sign-in.
pub async fn security(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<SecurityForm>,
) -> Result<Response> {
    let on = match form.require_2fa.as_deref() {
        None => false,
        Some("on") => true,
        Some(_) => return Err(AppError::BadRequest("require_2fa is `on` or absent.".to_owned())),
    };
    if user.session.role != Role::Owner {
        return Err(refused(Refused::NotAllowed));
    }
    if on && !user.session.two_factor {
        let message =
            "Turn on two-factor sign-in for yourself first (Settings), so that you keep access to the team.";
        return team_refused(
            &state,
            &user,
            layout,
            csrf_token,
            StatusCode::UNPROCESSABLE_ENTITY,
            message,
        )
        .await;
    }
    teams::set_require_2fa(&state.db, user.actor(client), user.session.team_id, on)
        .await?
        .map_err(refused)?;
    Ok(Redirect::to("/team").into_response())
}

// ---- the audit log ----

/// Entries per page of `/team/activity`.
const ACTIVITY_PAGE: i64 = 50;

#[derive(Template)]
#[template(path = "teams/activity.html")]
struct ActivityPage {
    layout: Layout,
    team_name: String,
    entries: Vec<Entry>,
    /// The link to the next (older) page, if there may be one.
    older: Option<String>,
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    before: Option<String>,
}

pub async fn activity(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    Query(query): Query<ActivityQuery>,
) -> Result<Html<String>> {
    if !user.session.role.may_manage_invitations() {
        return Err(AppError::Forbidden(
            "The team's activity is for its owners and admins.".to_owned(),
        ));
    }
    let before = match query.before.as_deref().filter(|raw| !raw.is_empty()) {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| AppError::BadRequest("before is not an entry's number.".to_owned()))?,
        ),
    };
    let entries = audit::page(&state.db, user.session.team_id, before, ACTIVITY_PAGE).await?;
    let older = (entries.len() == usize::try_from(ACTIVITY_PAGE).unwrap_or(usize::MAX))
        .then(|| {
            entries
                .last()
                .map(|last| format!("/team/activity?before={}", last.id))
        })
        .flatten();
    render(&ActivityPage {
        layout,
        team_name: user.session.team_name,
        entries,
        older,
    })
}

// ---- the invitation link ----
//
// Like the other emailed links (`http::auth`), the token leaves the URL at once: `GET
// /invite?token=…` of a live invitation answers 303 to `/invite` with the token in a cookie.
// A dead link gets its 404/410 page at once instead. The page's accept form posts the token.

#[derive(Template)]
#[template(path = "teams/invite.html")]
struct InvitePage {
    layout: Layout,
    csrf_token: String,
    token: String,
    invitation: Invitation,
    /// The signed-in user's address, if someone is signed in.
    signed_in_as: Option<String>,
    /// Whether that is the invited address.
    is_for_you: bool,
    /// Where to log in or sign up with the address filled in, coming back here.
    login_href: String,
    signup_href: String,
}

impl InvitePage {
    fn new(
        layout: Layout,
        csrf_token: String,
        token: &SecretToken,
        invitation: Invitation,
        user: Option<&CurrentUser>,
    ) -> Self {
        let signed_in_as = user.map(|user| user.session.email.clone());
        let is_for_you = signed_in_as
            .as_deref()
            .is_some_and(|email| email.to_lowercase() == invitation.email.to_lowercase());
        let email: String = url::form_urlencoded::byte_serialize(invitation.email.as_bytes()).collect();
        Self {
            layout,
            csrf_token,
            token: token.as_str().to_owned(),
            login_href: format!("/login?email={email}&next=%2Finvite"),
            signup_href: format!("/signup?email={email}&next=%2Finvite"),
            invitation,
            signed_in_as,
            is_for_you,
        }
    }
}

/// The page of an invitation link that leads nowhere: 404 unknown, 410 otherwise.
fn link_problem(layout: Layout, problem: LinkProblem) -> Result<Response> {
    let ask_again = "Ask someone in the team to invite you again.";
    let (status, title, message) = match problem {
        LinkProblem::Unknown => (
            StatusCode::NOT_FOUND,
            "This invitation link is not valid",
            "Open the whole link from the invitation email, or ask for a new invitation.",
        ),
        LinkProblem::Replaced => (
            StatusCode::GONE,
            "This invitation link was replaced",
            "A newer invitation email was sent: use the link in the latest one.",
        ),
        LinkProblem::Accepted => (
            StatusCode::GONE,
            "This invitation was already accepted",
            "Each invitation link works once. If it was you, the team is in your list of teams.",
        ),
        LinkProblem::Revoked => (StatusCode::GONE, "This invitation was withdrawn", ask_again),
        LinkProblem::Expired => (StatusCode::GONE, "This invitation has expired", ask_again),
    };
    render_with_status(
        status,
        &LinkPage {
            layout,
            title,
            message: message.to_owned(),
            action_href: "/teams",
            action_label: "Go to your teams",
        },
    )
}

#[derive(Deserialize)]
pub struct InviteQuery {
    token: Option<String>,
}

pub async fn invitation(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    headers: HeaderMap,
    Query(query): Query<InviteQuery>,
) -> Result<Response> {
    let cookie = state.cookies.invite_link;
    let (token, from_url) = match query.token.as_deref() {
        Some(raw) => (SecretToken::parse(raw), true),
        None => (link_token(&headers, cookie), false),
    };
    let Some(token) = token else {
        return Ok(forget_link(
            &state,
            cookie,
            link_problem(layout, LinkProblem::Unknown)?,
        ));
    };
    match invitations::find(&state.db, &token).await? {
        Err(problem) => Ok(forget_link(&state, cookie, link_problem(layout, problem)?)),
        Ok(_) if from_url => Ok(redirect_with_cookie(
            "/invite",
            state
                .cookies
                .set_cookie(cookie, token.as_str(), Some(LINK_COOKIE_LIFETIME)),
        )),
        Ok(invitation) => {
            let page = InvitePage::new(layout, csrf_token, &token, invitation, user.as_ref());
            Ok(render(&page)?.into_response())
        }
    }
}

#[derive(Deserialize)]
pub struct AcceptForm {
    #[serde(default)]
    token: String,
}

pub async fn accept(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Form(form): Form<AcceptForm>,
) -> Result<Response> {
    let cookie = state.cookies.invite_link;
    let Some(token) = SecretToken::parse(form.token.trim()) else {
        return link_problem(layout, LinkProblem::Unknown);
    };
    match state
        .accounts
        .accept_invitation(user.actor(client), &user.token, &token)
        .await?
    {
        Ok(_) => Ok(forget_link(&state, cookie, Redirect::to("/team").into_response())),
        Err(AcceptRefused::Link(problem)) => Ok(forget_link(&state, cookie, link_problem(layout, problem)?)),
        Err(AcceptRefused::OtherAddress(_)) => {
            // Show the invitation again, saying which address it is for.
            let invitation = invitations::find(&state.db, &token)
                .await?
                .map_err(|_| AppError::NotFound)?;
            let page = InvitePage::new(layout, csrf_token, &token, invitation, Some(&user));
            render_with_status(StatusCode::FORBIDDEN, &page)
        }
    }
}

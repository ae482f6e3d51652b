//! The user's teams: the list with the current one marked, creating one, switching the
//! session's current team, and the current team's members (SPEC, "Teams (B2B)").

use askama::Template;
use axum::{
    Form,
    extract::State,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AppState,
    csrf::CsrfToken,
    forms::{FormErrors, render_rejected},
    pages::Layout,
    render,
    session::CurrentUser,
};
use crate::{
    accounts::teams::{self, Member, MyTeam},
    domain::TeamName,
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

#[derive(Template)]
#[template(path = "teams/team.html")]
struct TeamPage {
    layout: Layout,
    team_name: String,
    members: Vec<Member>,
}

pub async fn team(State(state): State<AppState>, user: CurrentUser, layout: Layout) -> Result<Html<String>> {
    render(&TeamPage {
        layout,
        members: teams::members(&state.db, user.session.team_id).await?,
        team_name: user.session.team_name,
    })
}

//! The operator console under `/admin` (SPEC "Operator console"): what support needs in one
//! place. Only operators (`keel admin grant`) see it, and in production only with 2FA on; for
//! anyone else every route is the site's 404, so the console does not reveal that it exists.
//! Every page is `no-store`; every action is a CSRF-checked POST, audited with the operator
//! (`admin::audit`).

use askama::Template;
use axum::{
    Router,
    extract::{FromRequestParts, Path, Query, State},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    middleware::{from_extractor_with_state, from_fn},
    response::{AppendHeaders, Html, IntoResponse as _, Redirect, Response},
    routing::{MethodRouter, get, post},
};
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tower_http::set_header::SetResponseHeaderLayer;
use uuid::Uuid;

use super::{
    AppState,
    client_ip::ClientIp,
    csrf,
    csrf::CsrfToken,
    pages::Layout,
    render,
    session::{MaybeUser, cookie_value},
};
use crate::{
    accounts::{SecretToken, sessions},
    admin::{self, EmailStatus, EventState, JobState, ListFilter as _, OperatorActor, UserAction},
    error::{AppError, Result},
};

/// The console's routes, each behind [`Operator`] (but the end of an impersonation, which
/// the impersonated user's session posts).
pub fn router(state: AppState) -> Router<AppState> {
    let form = |methods: MethodRouter<AppState>| methods.route_layer(from_fn(csrf::require));
    let console = Router::new()
        .route("/admin", get(overview))
        .route("/admin/users", get(users))
        .route("/admin/users/{id}", get(user))
        .route(
            "/admin/users/{id}/disable",
            form(user_action(UserAction::Disable)),
        )
        .route("/admin/users/{id}/enable", form(user_action(UserAction::Enable)))
        .route(
            "/admin/users/{id}/end-sessions",
            form(user_action(UserAction::EndSessions)),
        )
        .route("/admin/users/{id}/impersonate", form(post(impersonate)))
        .route("/admin/teams", get(teams))
        .route("/admin/teams/{id}", get(team))
        .route("/admin/teams/{id}/reconcile", form(post(reconcile_team)))
        .route("/admin/events", get(events))
        .route("/admin/events/{id}", get(event))
        .route("/admin/events/{id}/replay", form(post(replay_event)))
        .route("/admin/jobs", get(jobs))
        .route("/admin/jobs/{id}/retry", form(post(retry_job)))
        .route("/admin/emails", get(emails))
        .route_layer(from_extractor_with_state::<Operator, _>(state));
    Router::new()
        .route("/admin/impersonation/stop", form(post(stop_impersonating)))
        .merge(console)
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// A signed-in operator, with 2FA in production; anyone else gets the site's 404, and an
/// operator viewing the product as a user 403.
pub struct Operator {
    pub user_id: Uuid,
    pub email: String,
    /// The operator's own session, kept aside during an impersonation.
    token: SecretToken,
}

impl Operator {
    fn actor(&self, client: ClientIp) -> OperatorActor<'_> {
        OperatorActor {
            user_id: self.user_id,
            email: &self.email,
            client: client.0,
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let MaybeUser(user) = MaybeUser::from_request_parts(parts, state).await?;
        match user {
            Some(user) if user.session.impersonator.is_some() => Err(AppError::Forbidden(
                "Stop viewing the product as this user to open the console again.".to_owned(),
            )),
            Some(user)
                if user.session.operator && (user.session.two_factor || !state.config.is_production()) =>
            {
                Ok(Self {
                    user_id: user.session.user_id,
                    email: user.session.email,
                    token: user.token,
                })
            }
            _ => Err(AppError::NotFound),
        }
    }
}

#[derive(Template)]
#[template(path = "admin/overview.html")]
struct OverviewPage {
    layout: Layout,
    overview: admin::Overview,
    revenue: Vec<(String, String)>,
    uncounted: i64,
}

async fn overview(State(state): State<AppState>, layout: Layout) -> Result<Html<String>> {
    let overview = admin::overview(&state.db).await?;
    let prices = state.catalog.prices_by_id().await;
    let (revenue, uncounted) = admin::monthly_revenue(&overview.active_by_price, &prices);
    let revenue = revenue
        .into_iter()
        .map(|(currency, amount)| {
            let shown = crate::billing::pricing::money(amount, &currency);
            (currency, shown)
        })
        .collect();
    render(&OverviewPage {
        layout,
        overview,
        revenue,
        uncounted,
    })
}

#[derive(Deserialize)]
struct UsersQuery {
    q: Option<String>,
    after: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    layout: Layout,
    q: String,
    users: Vec<admin::UserRow>,
    /// The next page's link, when there is one.
    next: Option<String>,
}

/// Longest search accepted.
const MAX_QUERY: usize = 254;

/// A search's text: at most `MAX_QUERY` bytes, and no NUL (which PostgreSQL's text cannot
/// hold), else 400.
fn search(raw: Option<String>) -> Result<String> {
    let text = raw.unwrap_or_default();
    if text.len() > MAX_QUERY || text.contains('\0') {
        return Err(AppError::BadRequest(format!(
            "A search is at most {MAX_QUERY} characters of text."
        )));
    }
    Ok(text)
}

/// A stored event's id from the path: one with a NUL cannot be stored, so names nothing.
fn event_id(id: &str) -> Result<&str> {
    if id.contains('\0') {
        return Err(AppError::NotFound);
    }
    Ok(id)
}

async fn users(
    State(state): State<AppState>,
    layout: Layout,
    Query(query): Query<UsersQuery>,
) -> Result<Html<String>> {
    let q = search(query.q)?;
    let after = query.after.map(|after| search(Some(after))).transpose()?;
    let mut users = admin::users(&state.db, &q, after.as_deref()).await?;
    let next = page_after(&mut users)
        .map(|last| format!("/admin/users?q={}&after={}", encode(&q), encode(&last.email)));
    render(&UsersPage {
        layout,
        q,
        users,
        next,
    })
}

/// Drops the row fetched beyond a page and returns the page's last row when there is a next
/// page.
fn page_after<T>(rows: &mut Vec<T>) -> Option<&T> {
    let more = rows.len() > admin::PAGE as usize;
    rows.truncate(admin::PAGE as usize);
    more.then(|| rows.last()).flatten()
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A path id that is not a UUID names nothing: 404, as an unknown one.
fn uuid(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| AppError::NotFound)
}

#[derive(Template)]
#[template(path = "admin/user.html")]
struct UserPage {
    layout: Layout,
    csrf_token: String,
    user: admin::UserDetail,
    audit: Vec<admin::AuditRow>,
}

async fn user(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(id): Path<String>,
) -> Result<Html<String>> {
    let id = uuid(&id)?;
    let user = admin::user(&state.db, id).await?;
    let audit = admin::audit_of(&state.db, &format!("user:{id}")).await?;
    render(&UserPage {
        layout,
        csrf_token,
        user,
        audit,
    })
}

/// The handler of `action` on the user of the path: 303 back to their page.
fn user_action(action: UserAction) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>, operator: Operator, client: ClientIp, Path(id): Path<String>| async move {
            let id = uuid(&id)?;
            admin::act_on_user(&state.db, operator.actor(client), id, action).await?;
            Ok::<_, AppError>(Redirect::to(&format!("/admin/users/{id}")))
        },
    )
}

/// `POST /admin/users/{id}/impersonate`: the browser becomes user `id` for 30 minutes, its
/// own session kept aside in a cookie of its own until the banner's stop button.
async fn impersonate(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = uuid(&id)?;
    let token = admin::impersonate(&state.db, operator.actor(client), id).await?;
    let cookies = &state.cookies;
    Ok((
        AppendHeaders([
            (
                header::SET_COOKIE,
                cookies.set_cookie(
                    cookies.session,
                    token.as_str(),
                    Some(sessions::IMPERSONATION_TIMEOUT),
                ),
            ),
            (
                header::SET_COOKIE,
                cookies.set_cookie(
                    cookies.operator_session,
                    operator.token.as_str(),
                    Some(sessions::ABSOLUTE_TIMEOUT),
                ),
            ),
        ]),
        Redirect::to("/dashboard"),
    )
        .into_response())
}

/// `POST /admin/impersonation/stop`: ends the impersonation and gives the browser its
/// operator's session back. 404 when the browser is not impersonating.
async fn stop_impersonating(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    client: ClientIp,
    headers: HeaderMap,
) -> Result<Response> {
    let cookies = &state.cookies;
    let own = cookie_value(&headers, cookies.operator_session).and_then(SecretToken::parse);
    let viewed = match &user {
        Some(user) => {
            let impersonator = user.session.impersonator.as_ref().ok_or(AppError::NotFound)?;
            let operator = OperatorActor {
                user_id: impersonator.user_id,
                email: &impersonator.email,
                client: client.0,
            };
            admin::stop_impersonating(&state.db, operator, user.session.user_id, &user.token).await?;
            Some(user.session.user_id)
        }
        // The impersonation ran out: only the operator's session is left to give back.
        None if own.is_some() => None,
        None => return Err(AppError::NotFound),
    };
    let session = match &own {
        Some(token) => cookies.session_cookie(token),
        None => cookies.remove_session_cookie(),
    };
    let to = viewed.map_or_else(|| "/admin".to_owned(), |id| format!("/admin/users/{id}"));
    Ok((
        AppendHeaders([
            (header::SET_COOKIE, session),
            (
                header::SET_COOKIE,
                cookies.set_cookie(cookies.operator_session, "", None),
            ),
        ]),
        Redirect::to(&to),
    )
        .into_response())
}

#[derive(Deserialize)]
struct TeamsQuery {
    q: Option<String>,
    before: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/teams.html")]
struct TeamsPage {
    layout: Layout,
    q: String,
    teams: Vec<admin::TeamRow>,
    next: Option<String>,
}

async fn teams(
    State(state): State<AppState>,
    layout: Layout,
    Query(query): Query<TeamsQuery>,
) -> Result<Html<String>> {
    let q = search(query.q)?;
    let before = query
        .before
        .as_deref()
        .map(|raw| {
            let (at, id) = cursor(raw)?;
            Ok::<_, AppError>((at, Uuid::parse_str(id).map_err(|_| bad_cursor())?))
        })
        .transpose()?;
    let mut teams = admin::teams(&state.db, &q, before.as_ref()).await?;
    let next = page_after(&mut teams).map(|last| {
        let at = last.created_at.format(&Rfc3339).unwrap_or_default();
        format!(
            "/admin/teams?q={}&before={}",
            encode(&q),
            encode(&format!("{at} {}", last.id))
        )
    });
    render(&TeamsPage {
        layout,
        q,
        teams,
        next,
    })
}

#[derive(Template)]
#[template(path = "admin/team.html")]
struct TeamPage {
    layout: Layout,
    csrf_token: String,
    team: admin::TeamDetail,
    /// The subscription's plan, as `STRIPE_PRICES` names its price.
    plan: Option<String>,
    /// Dunning: when paid access ends (`GRACE_PERIOD_DAYS` after the first failure).
    access_ends: Option<time::Date>,
    activity: Vec<crate::accounts::audit::Entry>,
    audit: Vec<admin::AuditRow>,
}

async fn team(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(id): Path<String>,
) -> Result<Html<String>> {
    let id = uuid(&id)?;
    let team = admin::team(&state.db, id).await?;
    let facts = team.subscription.as_ref().map(|s| &s.facts);
    let plan = facts
        .and_then(|s| s.plan(&state.config.stripe.prices))
        .map(ToString::to_string);
    let access_ends = facts
        .and_then(|s| s.access_ends_at(state.config.grace_period()))
        .map(|at| at.date());
    let activity = crate::accounts::audit::page(&state.db, id, None, admin::PAGE).await?;
    let audit = admin::audit_of(&state.db, &format!("team:{id}")).await?;
    render(&TeamPage {
        layout,
        csrf_token,
        team,
        plan,
        access_ends,
        activity,
        audit,
    })
}

async fn reconcile_team(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id = uuid(&id)?;
    let per_seat = state.config.stripe.per_seat_prices();
    admin::reconcile_team(
        &state.db,
        state.stripe.as_ref(),
        &per_seat,
        operator.actor(client),
        id,
    )
    .await?;
    Ok(Redirect::to(&format!("/admin/teams/{id}")))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    state: Option<String>,
    before: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/events.html")]
struct EventsPage {
    layout: Layout,
    kind: String,
    state: String,
    states: &'static [EventState],
    events: Vec<admin::EventRow>,
    next: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    layout: Layout,
    Query(query): Query<EventsQuery>,
) -> Result<Html<String>> {
    let kind = query.kind.filter(|kind| !kind.is_empty());
    if let Some(kind) = &kind
        && (kind.len() > 100
            || !kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'))
    {
        return Err(AppError::BadRequest(
            "type is a Stripe event type, such as invoice.payment_failed.".to_owned(),
        ));
    }
    let filter = EventState::parse(query.state.as_deref())?;
    let before = query.before.as_deref().map(event_cursor).transpose()?;
    let mut events = admin::events(&state.db, kind.as_deref(), filter, before.as_ref()).await?;
    let kind = kind.unwrap_or_default();
    let state_name = filter.map(EventState::as_str).unwrap_or_default();
    let next = page_after(&mut events).map(|last| {
        let at = last.received_at.format(&Rfc3339).unwrap_or_default();
        format!(
            "/admin/events?type={}&state={state_name}&before={}",
            encode(&kind),
            encode(&format!("{at} {}", last.id))
        )
    });
    render(&EventsPage {
        layout,
        kind,
        state: state_name.to_owned(),
        states: EventState::ALL,
        events,
        next,
    })
}

/// `before` of a list ordered by time: the last row's time (RFC 3339) and id, separated by a
/// space.
fn cursor(raw: &str) -> Result<(OffsetDateTime, &str)> {
    let (at, id) = raw.split_once(' ').ok_or_else(bad_cursor)?;
    let at = OffsetDateTime::parse(at, &Rfc3339).map_err(|_| bad_cursor())?;
    if id.len() > 255 || id.contains('\0') {
        return Err(bad_cursor());
    }
    Ok((at, id))
}

fn bad_cursor() -> AppError {
    AppError::BadRequest("before is not a position in this list.".to_owned())
}

fn event_cursor(raw: &str) -> Result<admin::EventCursor> {
    cursor(raw).map(|(at, id)| (at, id.to_owned()))
}

/// How much of an event's JSON its page shows.
const PAYLOAD_SHOWN: usize = 64 * 1024;

#[derive(Template)]
#[template(path = "admin/event.html")]
struct EventPage {
    layout: Layout,
    csrf_token: String,
    event: admin::EventDetail,
    /// Pretty-printed when it parses, else as stored; cut at `PAYLOAD_SHOWN`.
    json: String,
    truncated: bool,
    audit: Vec<admin::AuditRow>,
}

async fn event(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Path(id): Path<String>,
) -> Result<Html<String>> {
    let event = admin::event(&state.db, event_id(&id)?).await?;
    // serde_json refuses nesting deeper than 128: such a payload is shown as stored.
    let pretty = serde_json::from_str::<serde_json::Value>(&event.payload)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok());
    let mut json = pretty.unwrap_or_else(|| event.payload.clone());
    let truncated = json.len() > PAYLOAD_SHOWN;
    json.truncate(json.floor_char_boundary(PAYLOAD_SHOWN));
    let audit = admin::audit_of(&state.db, &format!("event:{id}")).await?;
    render(&EventPage {
        layout,
        csrf_token,
        event,
        json,
        truncated,
        audit,
    })
}

async fn replay_event(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let mode = state.stripe.as_ref().and_then(|stripe| stripe.mode());
    admin::replay_event(
        &state.db,
        &state.mailer,
        mode,
        operator.actor(client),
        event_id(&id)?,
    )
    .await?;
    Ok(Redirect::to(&admin::event_path(&id)))
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "admin/jobs.html")]
struct JobsPage {
    layout: Layout,
    csrf_token: String,
    state: &'static str,
    states: &'static [JobState],
    jobs: Vec<admin::JobRow>,
    next: Option<String>,
}

async fn jobs(
    State(state): State<AppState>,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<JobsQuery>,
) -> Result<Html<String>> {
    let filter = JobState::parse(query.state.as_deref())?.unwrap_or(JobState::Dead);
    let mut jobs = admin::jobs(&state.db, filter, query.before).await?;
    let next =
        page_after(&mut jobs).map(|last| format!("/admin/jobs?state={}&before={}", filter.as_str(), last.id));
    render(&JobsPage {
        layout,
        csrf_token,
        state: filter.as_str(),
        states: JobState::ALL,
        jobs,
        next,
    })
}

async fn retry_job(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id: i64 = id.parse().map_err(|_| AppError::NotFound)?;
    admin::retry_job(&state.db, operator.actor(client), id).await?;
    Ok(Redirect::to("/admin/jobs?state=queued"))
}

#[derive(Deserialize)]
struct EmailsQuery {
    status: Option<String>,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "admin/emails.html")]
struct EmailsPage {
    layout: Layout,
    status: String,
    statuses: &'static [EmailStatus],
    emails: Vec<admin::EmailRow>,
    next: Option<String>,
}

async fn emails(
    State(state): State<AppState>,
    layout: Layout,
    Query(query): Query<EmailsQuery>,
) -> Result<Html<String>> {
    let filter = EmailStatus::parse(query.status.as_deref())?;
    let mut emails = admin::emails(&state.db, filter, query.before).await?;
    let status = filter.map(EmailStatus::as_str).unwrap_or_default();
    let next =
        page_after(&mut emails).map(|last| format!("/admin/emails?status={status}&before={}", last.id));
    render(&EmailsPage {
        layout,
        status: status.to_owned(),
        statuses: EmailStatus::ALL,
        emails,
        next,
    })
}

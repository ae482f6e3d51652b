//! The operator console under `/admin` (SPEC "Operator console"): what support needs in one
//! place. Only operators (`keel admin grant`) see it, and in production only with 2FA on; for
//! anyone else every route is the site's 404, so the console does not reveal that it exists.
//! Every page is `no-store`; every action is a CSRF-checked POST, audited with the operator
//! (`admin::audit`).

use askama::Template;
use axum::{
    Router,
    extract::{FromRequestParts, Path, Query, State},
    http::{HeaderValue, header, request::Parts},
    middleware::{from_extractor_with_state, from_fn},
    response::{Html, Redirect},
    routing::{get, post},
};
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tower_http::set_header::SetResponseHeaderLayer;
use uuid::Uuid;

use super::{
    AppState, client_ip::ClientIp, csrf, csrf::CsrfToken, pages::Layout, render, session::MaybeUser,
};
use crate::{
    admin::{self, EmailStatus, EventState, JobState, ListFilter as _, OperatorActor, UserAction},
    error::{AppError, Result},
};

/// The console's routes, each behind [`Operator`].
pub fn router(state: AppState) -> Router<AppState> {
    let form = |methods: axum::routing::MethodRouter<AppState>| methods.route_layer(from_fn(csrf::require));
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/users", get(users))
        .route("/admin/users/{id}", get(user))
        .route("/admin/users/{id}/disable", form(post(disable_user)))
        .route("/admin/users/{id}/enable", form(post(enable_user)))
        .route("/admin/users/{id}/end-sessions", form(post(end_sessions)))
        .route("/admin/events", get(events))
        .route("/admin/events/{id}", get(event))
        .route("/admin/events/{id}/replay", form(post(replay_event)))
        .route("/admin/jobs", get(jobs))
        .route("/admin/jobs/{id}/retry", form(post(retry_job)))
        .route("/admin/emails", get(emails))
        .route_layer(from_extractor_with_state::<Operator, _>(state))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// A signed-in operator, with 2FA in production; anyone else gets the site's 404.
pub struct Operator {
    pub user_id: Uuid,
    pub email: String,
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
            Some(user)
                if user.session.operator && (user.session.two_factor || !state.config.is_production()) =>
            {
                Ok(Self {
                    user_id: user.session.user_id,
                    email: user.session.email,
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

async fn users(
    State(state): State<AppState>,
    layout: Layout,
    Query(query): Query<UsersQuery>,
) -> Result<Html<String>> {
    let q = query.q.unwrap_or_default();
    if q.len() > MAX_QUERY || query.after.as_ref().is_some_and(|after| after.len() > MAX_QUERY) {
        return Err(AppError::BadRequest(format!(
            "A search is at most {MAX_QUERY} characters."
        )));
    }
    let mut users = admin::users(&state.db, &q, query.after.as_deref()).await?;
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

async fn act_on_user(
    state: &AppState,
    operator: &Operator,
    client: ClientIp,
    id: &str,
    action: UserAction,
) -> Result<Redirect> {
    let id = uuid(id)?;
    admin::act_on_user(&state.db, operator.actor(client), id, action).await?;
    Ok(Redirect::to(&format!("/admin/users/{id}")))
}

async fn disable_user(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    act_on_user(&state, &operator, client, &id, UserAction::Disable).await
}

async fn enable_user(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    act_on_user(&state, &operator, client, &id, UserAction::Enable).await
}

async fn end_sessions(
    State(state): State<AppState>,
    operator: Operator,
    client: ClientIp,
    Path(id): Path<String>,
) -> Result<Redirect> {
    act_on_user(&state, &operator, client, &id, UserAction::EndSessions).await
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

/// `before`: the last row's `received_at` (RFC 3339) and id, separated by a space.
fn event_cursor(raw: &str) -> Result<admin::EventCursor> {
    let bad = || AppError::BadRequest("before is not a position in this list.".to_owned());
    let (at, id) = raw.split_once(' ').ok_or_else(bad)?;
    let at = OffsetDateTime::parse(at, &Rfc3339).map_err(|_| bad())?;
    if id.len() > 255 {
        return Err(bad());
    }
    Ok((at, id.to_owned()))
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
    let event = admin::event(&state.db, &id).await?;
    // serde_json refuses nesting deeper than 128: such a payload is shown as stored.
    let pretty = serde_json::from_str::<serde_json::Value>(&event.payload)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok());
    let mut json = pretty.unwrap_or_else(|| event.payload.clone());
    let truncated = json.len() > PAYLOAD_SHOWN;
    if truncated {
        let mut end = PAYLOAD_SHOWN;
        while !json.is_char_boundary(end) {
            end -= 1;
        }
        json.truncate(end);
    }
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
    admin::replay_event(&state.db, &state.mailer, mode, operator.actor(client), &id).await?;
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

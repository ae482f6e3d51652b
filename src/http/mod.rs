//! The HTTP surface: the one route map and the middleware stack around it.
//!
//! Handlers live in one file per area; they parse input, call feature code and render.
//! Nothing outside `http` imports from it.

mod account;
mod admin;
mod assets;
mod auth;
mod billing;
pub mod client_ip;
pub mod csrf;
mod errors;
pub mod forms;
mod health;
mod metrics;
mod middleware;
mod pages;
pub mod rate_limit;
pub mod serve;
pub mod session;
mod teams;
mod webhooks;

use std::sync::Arc;

use askama::Template;
use axum::{
    Router,
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{from_extractor_with_state, from_fn, from_fn_with_state},
    response::Html,
    routing::{MethodRouter, get, post},
};
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer, compression::CompressionLayer, limit::RequestBodyLimitLayer,
    set_header::SetResponseHeaderLayer, timeout::TimeoutLayer,
};

pub use self::billing::{PaidFeature, RequireEntitlement, RequirePlan};
use self::{csrf::CsrfKey, session::CookieNames};
use crate::{
    accounts::Accounts,
    billing::{pricing::Catalog, signature::Verifier, stripe::Stripe},
    cache::Cache,
    config::Config,
    error::AppError,
    health::HealthChecker,
    jobs,
};

/// Largest body a form route accepts; larger gets 413.
pub const FORM_BODY_LIMIT: usize = 64 * 1024;
/// Largest body `/webhooks/stripe` accepts (Stripe events are far smaller).
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers can reach (`State<AppState>`), behind one `Arc`: axum clones the state for
/// every request, so that clone is kept to one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub config: Config,
    pub db: PgPool,
    pub cache: Cache,
    pub health: HealthChecker,
    pub accounts: Accounts,
    pub csrf: CsrfKey,
    pub cookies: CookieNames,
    /// `None` without `STRIPE_WEBHOOK_SECRET`: the webhook answers 503.
    pub webhooks: Option<Verifier>,
    /// `None` without `STRIPE_SECRET_KEY`: billing pages say billing is not configured.
    pub stripe: Option<Stripe>,
    /// The plans' prices for `/pricing`.
    pub catalog: Catalog,
    /// Wakes the job workers after a commit that enqueued without the trigger's notify.
    pub job_waker: jobs::Waker,
    /// For what the console runs in the request (an event's replay).
    pub mailer: crate::mail::Mailer,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The whole application as one `Router`, and the rate limiters whose memory the caller must
/// trim now and then (see [`rate_limit::forget_quiet_clients`]).
pub fn router(state: AppState) -> anyhow::Result<(Router, Vec<rate_limit::Limiter>)> {
    let config = &state.config;
    let (rate_limit, site_limiter) = rate_limit::layer(config.rate_limits, &config.trusted_proxies)?;
    let auth_budget =
        rate_limit::AuthBudget::new(config.rate_limits, &config.trusted_proxies, state.cache.clone())?;
    let auth_limiter = auth_budget.local_limiter();
    let auth_rate_limit = from_fn_with_state(auth_budget, rate_limit::auth_budget);

    // `form(…)`: a route that changes state; its POST needs a valid CSRF token.
    let form = |methods: MethodRouter<AppState>| methods.route_layer(from_fn(csrf::require));

    // Anyone may see these.
    let public = Router::new()
        .route("/", get(pages::landing))
        .route("/pricing", get(pages::pricing))
        .route("/logout", form(post(auth::logout)))
        .route("/verify-email", get(auth::verify_email).layer(no_referrer()))
        .route("/confirm-email", get(auth::confirm_email).layer(no_referrer()))
        .route("/revert-email", get(auth::revert_email).layer(no_referrer()))
        // The invitation link's page; accepting needs a signed-in user (the handler asks).
        .route(
            "/invite",
            form(get(teams::invitation).post(teams::accept)).layer(no_referrer()),
        );

    // The account forms: their POSTs are also under the stricter auth limit (as are the
    // signed-in forms that check a password or send an email, below: invitations too).
    let auth_forms = Router::new()
        .route("/signup", form(get(auth::signup_form).post(auth::signup)))
        .route("/login", form(get(auth::login_form).post(auth::login)))
        .route(
            "/login/2fa",
            form(get(auth::second_factor_form).post(auth::second_factor)),
        )
        .route(
            "/forgot-password",
            form(get(auth::forgot_password_form).post(auth::forgot_password)),
        )
        .route(
            "/reset-password",
            form(get(auth::reset_password_form).post(auth::reset_password)).layer(no_referrer()),
        )
        .route_layer(auth_rate_limit.clone());

    // Signed-in users only; anyone else is sent to /login?next=…. Per method router, with
    // `route_layer`, so that a wrong method is 405 for everyone (SPEC: a wrong method is a
    // 4xx), as on every other route, rather than a redirect to log in first.
    let user_only = |methods: MethodRouter<AppState>| {
        methods.route_layer(from_extractor_with_state::<session::CurrentUser, _>(
            state.clone(),
        ))
    };
    // The current team's pages: also under the team's policy (see `session::TeamPolicy`).
    let team_only = |methods: MethodRouter<AppState>| {
        user_only(methods.route_layer(from_extractor_with_state::<session::TeamPolicy, _>(state.clone())))
    };
    // The forms that change how an account signs in or end it: not for an operator viewing
    // the product as its user (see `session::NotImpersonating`).
    let own_account = |methods: MethodRouter<AppState>| {
        user_only(
            methods.route_layer(from_extractor_with_state::<session::NotImpersonating, _>(
                state.clone(),
            )),
        )
    };
    let signed_in = Router::new()
        .route("/dashboard", team_only(get(account::dashboard)))
        .route("/settings", user_only(get(account::settings)))
        .route("/teams", user_only(form(get(teams::list).post(teams::create))))
        .route("/teams/switch", user_only(form(post(teams::switch))))
        .route("/team", team_only(get(teams::team)))
        .route("/team/security", team_only(form(post(teams::security))))
        .route(
            "/team/invitations",
            team_only(form(post(teams::invite)).layer(auth_rate_limit.clone())),
        )
        .route(
            "/team/invitations/{id}/resend",
            team_only(form(post(teams::resend)).layer(auth_rate_limit.clone())),
        )
        .route(
            "/team/invitations/{id}/revoke",
            team_only(form(post(teams::revoke))),
        )
        .route(
            "/team/members/{user_id}/role",
            team_only(form(post(teams::change_role))),
        )
        .route(
            "/team/members/{user_id}/remove",
            team_only(form(post(teams::remove))),
        )
        .route("/team/leave", user_only(form(post(teams::leave))))
        .route("/team/activity", team_only(get(teams::activity)))
        .route("/billing", team_only(get(billing::billing)))
        .route("/billing/checkout", team_only(form(post(billing::checkout))))
        .route("/billing/portal", team_only(form(post(billing::portal))))
        // The example paid feature: entitled teams only (see billing::RequireEntitlement).
        .route("/pro", team_only(get(billing::pro)))
        .route("/settings/2fa", user_only(get(account::two_factor)))
        .route(
            "/settings/2fa/enable",
            own_account(form(post(account::enable_two_factor)).layer(auth_rate_limit.clone())),
        )
        .route(
            "/settings/2fa/disable",
            own_account(form(post(account::disable_two_factor)).layer(auth_rate_limit.clone())),
        )
        .route("/settings/export", user_only(form(post(account::request_export))))
        .route(
            "/settings/delete",
            own_account(form(post(account::delete_account)).layer(auth_rate_limit.clone())),
        )
        .route("/settings/export/{id}", user_only(get(account::download_export)))
        .route("/settings/sessions", user_only(get(account::sessions)))
        .route(
            "/settings/sessions/{id}/revoke",
            own_account(form(post(account::revoke_session))),
        )
        .route(
            "/settings/sessions/revoke-others",
            own_account(form(post(account::revoke_other_sessions))),
        )
        .route(
            "/settings/email",
            own_account(form(post(account::change_email)).layer(auth_rate_limit.clone())),
        )
        .route(
            "/settings/password",
            own_account(form(post(account::change_password)).layer(auth_rate_limit.clone())),
        )
        .route(
            "/settings/resend-verification",
            user_only(form(post(account::resend_verification)).layer(auth_rate_limit)),
        );

    // What every response goes through, outermost first: the request id, the request span
    // with its access-log line and metrics, the security headers; compression; error pages;
    // panics as 500; the request timeout.
    let stack = ServiceBuilder::new()
        .layer(middleware::request_ids())
        .layer(middleware::trace())
        .layer(middleware::security_headers(config.is_https()))
        .layer(CompressionLayer::new())
        .layer(from_fn(errors::error_pages))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ));

    // Pages and forms: also rate limited per client, a CSRF context on every request, small
    // bodies. One `layer` call per part of the route map: axum boxes and clones, per request,
    // what each call wraps around a route (docs/PERFORMANCE.md).
    let site = Router::new()
        .merge(public)
        .merge(auth_forms)
        .merge(signed_in)
        .merge(admin::router(state.clone()))
        .merge(assets::router())
        .merge(metrics::router())
        .fallback(errors::not_found)
        .layer(
            stack
                .clone()
                .layer(rate_limit)
                .layer(from_fn_with_state(state.clone(), csrf::context))
                .layer(RequestBodyLimitLayer::new(FORM_BODY_LIMIT)),
        );

    // Probes are never rate limited: an uptime monitor must not be told 429.
    let router = Router::new()
        .merge(health::router().layer(stack.clone()))
        .merge(webhooks::router().layer(stack))
        .merge(site)
        .with_state(state);
    Ok((router, vec![site_limiter, auth_limiter]))
}

/// For the pages of emailed links: whatever the browser still has of the link leaves with no
/// request (SPEC: tokens reach no Referer).
fn no_referrer() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"))
}

/// Renders an askama template into an HTML response.
pub fn render(template: &impl Template) -> Result<Html<String>, AppError> {
    template
        .render()
        .map(Html)
        .map_err(|error| AppError::Internal(anyhow::Error::new(error).context("rendering a template")))
}

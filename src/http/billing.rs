//! The billing pages: `/billing` (the team's subscription in words, and the dunning state),
//! `/pro` (the example paid feature), and the guards a fork puts on its own paid routes:
//! [`RequireEntitlement`] (any paid plan) and [`RequirePlan`] (certain plans only).

use std::marker::PhantomData;

use askama::Template;
use axum::{
    Form,
    extract::{FromRequestParts, Query, State},
    http::request::Parts,
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{
    AppState,
    client_ip::ClientIp,
    csrf::CsrfToken,
    pages::Layout,
    render,
    session::{CurrentUser, NotSignedIn},
};
use crate::{
    accounts::audit::{self, Action, Event},
    billing::{
        checkout::{self, CheckoutRefused, Payer},
        entitlement::Subscription,
        seats::{self, Seats},
        stripe::Stripe,
    },
    config::Config,
    domain::PlanName,
    error::{AppError, Result},
};

/// A signed-in user whose team may use paid features; anyone else is sent to `/billing`
/// (or to log in first). Entitlement is computed now, from the subscription and
/// `GRACE_PERIOD_DAYS`: access ends on time without any job running.
pub struct RequireEntitlement(pub CurrentUser);

impl FromRequestParts<AppState> for RequireEntitlement {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = CurrentUser::from_request_parts(parts, state)
            .await
            .map_err(NotSignedIn::into_response)?;
        let entitled = user.session.subscription.as_ref().is_some_and(|subscription| {
            subscription.entitled(state.config.grace_period(), OffsetDateTime::now_utc())
        });
        if entitled {
            Ok(RequireEntitlement(user))
        } else {
            Err(Redirect::to("/billing").into_response())
        }
    }
}

/// A feature sold on certain plans only, for [`RequirePlan`]. The names are those of
/// `STRIPE_PRICES` (a name no price carries is never matched):
/// ```ignore
/// pub struct Reports;
/// impl PaidFeature for Reports {
///     const PLANS: &'static [&'static str] = &["team"];
/// }
/// async fn reports(RequirePlan(user, _): RequirePlan<Reports>) -> … { … }
/// ```
pub trait PaidFeature: Send + Sync + 'static {
    const PLANS: &'static [&'static str];
}

/// A signed-in user whose team is entitled and on one of `F::PLANS`; anyone else is sent to
/// `/billing` (where the plan can be changed), or to log in first.
pub struct RequirePlan<F: PaidFeature>(pub CurrentUser, pub PhantomData<F>);

impl<F: PaidFeature> FromRequestParts<AppState> for RequirePlan<F> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = CurrentUser::from_request_parts(parts, state)
            .await
            .map_err(NotSignedIn::into_response)?;
        let config = &state.config;
        let entitled = user.session.subscription.as_ref().is_some_and(|subscription| {
            subscription.entitled_to(
                F::PLANS,
                &config.stripe.prices,
                config.grace_period(),
                OffsetDateTime::now_utc(),
            )
        });
        if entitled {
            Ok(RequirePlan(user, PhantomData))
        } else {
            Err(Redirect::to("/billing").into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "billing/pro.html")]
struct ProPage {
    layout: Layout,
    team_name: String,
}

/// The example paid feature.
pub async fn pro(RequireEntitlement(user): RequireEntitlement, layout: Layout) -> Result<Html<String>> {
    render(&ProPage {
        layout,
        team_name: user.session.team_name,
    })
}

pub struct Dunning {
    /// The last day of paid access, e.g. "2026-12-01".
    pub access_ends_on: String,
    pub access_ended: bool,
}

/// The dunning state of a subscription, for the banner and `/billing`.
pub fn dunning(subscription: &Subscription, config: &Config, now: OffsetDateTime) -> Option<Dunning> {
    let ends = subscription.access_ends_at(config.grace_period())?;
    Some(Dunning {
        access_ends_on: ends.date().to_string(),
        access_ended: !subscription.entitled(config.grace_period(), now),
    })
}

/// The subscription's plan as people read it ("Paid plan" for a price keel is not configured
/// with).
pub fn plan_in_words(subscription: &Subscription, config: &Config) -> String {
    subscription
        .plan(&config.stripe.prices)
        .map_or_else(|| "Paid plan".to_owned(), PlanName::display_name)
}

#[derive(Template)]
#[template(path = "billing/billing.html")]
struct BillingPage {
    layout: Layout,
    team_name: String,
    subscription: Option<Subscription>,
    /// The subscription's plan, as people read it.
    plan_name: String,
    /// Failed payments: the date paid access ends, or that it has.
    dunning: Option<Dunning>,
    /// A per-seat plan's seats.
    seats: Option<Seats>,
    configured: bool,
    /// Only the owner manages billing; others see the state.
    may_manage: bool,
    csrf_token: String,
    /// Plans to subscribe to (key, name), when there is no subscription.
    plans: Vec<(String, String)>,
    /// Back from a paid checkout whose webhooks have not arrived yet.
    checkout_pending: bool,
}

#[derive(Deserialize)]
pub struct BillingQuery {
    checkout: Option<String>,
}

pub async fn billing(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
    CsrfToken(csrf_token): CsrfToken,
    Query(query): Query<BillingQuery>,
) -> Result<Html<String>> {
    let now = OffsetDateTime::now_utc();
    let may_manage = user.session.role.may_manage_billing();
    let subscription = user.session.subscription;
    let plan_name = subscription
        .as_ref()
        .map(|subscription| plan_in_words(subscription, &state.config))
        .unwrap_or_default();
    let dunning = subscription
        .as_ref()
        .and_then(|subscription| dunning(subscription, &state.config, now));
    let plans = state
        .config
        .stripe
        .prices
        .iter()
        .map(|price| (price.plan.to_string(), price.plan.display_name()))
        .collect();
    let per_seat_price = (subscription.as_ref())
        .and_then(|subscription| subscription.price_id.as_deref())
        .filter(|price| (state.config.stripe.prices.iter()).any(|p| p.per_seat && p.price_id == *price));
    let seats = match per_seat_price {
        Some(price) => Some(seats::of_team(&state.db, user.session.team_id, price).await?),
        None => None,
    };
    render(&BillingPage {
        layout,
        team_name: user.session.team_name,
        checkout_pending: subscription.is_none() && query.checkout.as_deref() == Some("success"),
        subscription,
        plan_name,
        dunning,
        seats,
        configured: state.stripe.is_some(),
        may_manage,
        csrf_token,
        plans,
    })
}

#[derive(Deserialize)]
pub struct CheckoutForm {
    plan: String,
}

/// `POST /billing/checkout`: off to Stripe Checkout for the chosen plan.
pub async fn checkout(
    State(state): State<AppState>,
    user: CurrentUser,
    client: ClientIp,
    Form(form): Form<CheckoutForm>,
) -> Result<Response> {
    let stripe = manager(&state, &user)?;
    let price = state
        .config
        .stripe
        .prices
        .iter()
        .find(|price| price.plan.as_str() == form.plan)
        .ok_or_else(|| AppError::BadRequest(format!("There is no plan called {:?}.", form.plan)))?;
    let session = &user.session;
    let payer = Payer {
        team: session.team_id,
        team_name: &session.team_name,
        email: &session.email,
    };
    match checkout::start_checkout(&state.db, stripe, &payer, price, &state.config.base_url).await? {
        Ok(url) => {
            let event = Event::new(Action::CheckoutStarted).on(price.plan.as_str());
            record(&state, &user, client, event).await?;
            Ok(Redirect::to(url.as_str()).into_response())
        }
        Err(CheckoutRefused::AlreadySubscribed) => Err(AppError::Conflict(
            "Your team already has a subscription. Change plans with \"Manage billing\" on the billing page."
                .to_owned(),
        )),
        Err(CheckoutRefused::PaymentPending) => Err(AppError::Conflict(
            "Your team's last checkout was paid: its subscription will show on the billing page in a moment."
                .to_owned(),
        )),
        Err(CheckoutRefused::InProgress) => Err(AppError::Conflict(
            "Another checkout for your team is being started. Please try again in a moment.".to_owned(),
        )),
    }
}

/// `POST /billing/portal`: off to Stripe's customer portal (card, plan, invoices, cancel).
pub async fn portal(State(state): State<AppState>, user: CurrentUser, client: ClientIp) -> Result<Response> {
    let stripe = manager(&state, &user)?;
    let url = checkout::open_portal(&state.db, stripe, user.session.team_id, &state.config.base_url).await?;
    if url.is_some() {
        record(&state, &user, client, Event::new(Action::PortalOpened)).await?;
    }
    // A team that never checked out has nothing to manage yet: show it the plans.
    Ok(Redirect::to(url.as_ref().map_or("/pricing", url::Url::as_str)).into_response())
}

/// Writes `event`, done by `user`, to their team's audit log.
async fn record(state: &AppState, user: &CurrentUser, client: ClientIp, event: Event<'_>) -> Result<()> {
    let mut conn = state.db.acquire().await?;
    audit::record(&mut conn, user.session.team_id, Some(user.actor(client)), event).await
}

/// The Stripe client, if this user may manage the team's billing.
fn manager<'a>(state: &'a AppState, user: &CurrentUser) -> Result<&'a Stripe> {
    let stripe = state
        .stripe
        .as_ref()
        .ok_or_else(|| AppError::Conflict("Billing is not configured on this server.".to_owned()))?;
    if !user.session.role.may_manage_billing() {
        return Err(AppError::Forbidden(
            "Only the team's owner can manage its billing.".to_owned(),
        ));
    }
    Ok(stripe)
}

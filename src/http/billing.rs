//! The billing pages: `/billing` (the team's subscription in words, and the dunning state),
//! `/pro` (the example paid feature) and [`RequireEntitlement`], the guard a fork puts on its
//! own paid routes.

use askama::Template;
use axum::{
    extract::{FromRequestParts, State},
    http::request::Parts,
    response::{Html, IntoResponse, Redirect, Response},
};
use time::OffsetDateTime;

use super::{
    AppState,
    pages::Layout,
    render,
    session::{CurrentUser, NotSignedIn},
};
use crate::{billing::entitlement::Standing, config::Config, domain::PlanName, error::Result};

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
        let entitled = user.session.billing.as_ref().is_some_and(|standing| {
            standing.entitled(state.config.grace_period(), OffsetDateTime::now_utc())
        });
        if entitled {
            Ok(RequireEntitlement(user))
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

/// The team's subscription as `/billing` shows it.
struct Subscription {
    plan: String,
    status: &'static str,
    renews_on: Option<String>,
    cancels_at_period_end: bool,
    /// "Past due" and friends: the date paid access ends, or that it has.
    dunning: Option<Dunning>,
}

pub struct Dunning {
    /// The last day of paid access, e.g. "2026-12-01".
    pub access_ends_on: String,
    pub access_ended: bool,
}

/// The dunning state of a standing, for the banner and `/billing`.
pub fn dunning(standing: &Standing, config: &Config, now: OffsetDateTime) -> Option<Dunning> {
    let ends = standing.access_ends_at(config.grace_period())?;
    Some(Dunning {
        access_ends_on: ends.date().to_string(),
        access_ended: !standing.entitled(config.grace_period(), now),
    })
}

fn plan_name(config: &Config, price_id: Option<&str>) -> String {
    config
        .stripe
        .prices
        .iter()
        .find(|price| Some(price.price_id.as_str()) == price_id)
        .map_or_else(
            || "Paid plan".to_owned(),
            |price| PlanName::display_name(&price.plan),
        )
}

#[derive(Template)]
#[template(path = "billing/billing.html")]
struct BillingPage {
    layout: Layout,
    team_name: String,
    subscription: Option<Subscription>,
    configured: bool,
}

pub async fn billing(
    State(state): State<AppState>,
    user: CurrentUser,
    layout: Layout,
) -> Result<Html<String>> {
    let now = OffsetDateTime::now_utc();
    let subscription = user.session.billing.as_ref().map(|standing| Subscription {
        plan: plan_name(&state.config, standing.price_id.as_deref()),
        status: standing.status_in_words(),
        renews_on: standing.current_period_end.map(|end| end.date().to_string()),
        cancels_at_period_end: standing.cancel_at_period_end,
        dunning: dunning(standing, &state.config, now),
    });
    render(&BillingPage {
        layout,
        team_name: user.session.team_name,
        subscription,
        configured: state.config.stripe.secret_key.is_some(),
    })
}

//! Public pages (landing, pricing) and the layout every page shares.

use askama::Template;
use axum::{
    extract::{FromRequestParts, State},
    http::request::Parts,
    response::Html,
};

use time::OffsetDateTime;

use super::{
    AppState, assets,
    billing::{self, Dunning},
    csrf::CsrfToken,
    render,
    session::MaybeUser,
};
use crate::error::{AppError, Result};

/// What the base layout (`templates/layout.html`) needs on every page. Handlers take it as an
/// extractor; it knows who is signed in (for the navigation and the banners).
pub struct Layout {
    pub app_name: &'static str,
    pub stylesheet: &'static str,
    pub favicon: &'static str,
    pub user: Option<LayoutUser>,
}

/// The signed-in user as the layout shows them.
pub struct LayoutUser {
    pub email: String,
    pub email_verified: bool,
    /// For the logout and resend-verification forms of the layout.
    pub csrf_token: String,
    /// Failed payments: the banner on every page.
    pub dunning: Option<Dunning>,
    /// An operator viewing the product as this user: the banner with its stop button.
    pub impersonator: Option<String>,
    /// An operator (not impersonating): the navigation links the console.
    pub operator: bool,
}

impl Layout {
    /// The layout for nobody in particular (error pages).
    pub fn new() -> Self {
        Self {
            app_name: crate::NAME,
            stylesheet: assets::APP_CSS,
            favicon: assets::FAVICON_SVG,
            user: None,
        }
    }
}

impl FromRequestParts<AppState> for Layout {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let MaybeUser(user) = MaybeUser::from_request_parts(parts, state).await?;
        let mut layout = Layout::new();
        if let Some(user) = user {
            let CsrfToken(csrf_token) = CsrfToken::from_request_parts(parts, state).await?;
            let dunning = user.session.subscription.as_ref().and_then(|subscription| {
                billing::dunning(subscription, &state.config, OffsetDateTime::now_utc())
            });
            layout.user = Some(LayoutUser {
                operator: user.session.operator && user.session.impersonator.is_none(),
                impersonator: user.session.impersonator.map(|operator| operator.email),
                email: user.session.email,
                email_verified: user.session.email_verified,
                csrf_token,
                dunning,
            });
        }
        Ok(layout)
    }
}

#[derive(Template)]
#[template(path = "pages/landing.html")]
struct LandingPage {
    layout: Layout,
}

pub async fn landing(layout: Layout) -> Result<Html<String>> {
    render(&LandingPage { layout })
}

/// One plan on the pricing page.
struct PlanCard {
    key: String,
    name: String,
    /// "$12.00 per month"; `None` while Stripe's price is unknown (the name alone is shown).
    price: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/pricing.html")]
struct PricingPage {
    layout: Layout,
    plans: Vec<PlanCard>,
}

/// The plans of `STRIPE_PRICES` with Stripe's amounts (see `billing::pricing` for the cache
/// and what is shown when Stripe or Redis is down). Signed-in users go straight to checkout.
pub async fn pricing(State(state): State<AppState>, layout: Layout) -> Result<Html<String>> {
    let plans = state
        .catalog
        .offers()
        .await
        .into_iter()
        .map(|offer| PlanCard {
            key: offer.plan.to_string(),
            name: offer.plan.display_name(),
            price: offer.price.and_then(|price| price.in_words()),
        })
        .collect();
    render(&PricingPage { layout, plans })
}

//! Public pages: the landing page and pricing.

use askama::Template;
use axum::{Router, extract::State, response::Html, routing::get};

use super::{AppState, assets, render};
use crate::error::Result;

/// What the base layout (`templates/layout.html`) needs on every page.
pub struct Layout {
    pub app_name: &'static str,
    pub stylesheet: &'static str,
    pub favicon: &'static str,
}

impl Layout {
    pub fn new() -> Self {
        Self {
            app_name: "keel",
            stylesheet: assets::APP_CSS,
            favicon: assets::FAVICON_SVG,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(landing))
        .route("/pricing", get(pricing))
}

#[derive(Template)]
#[template(path = "pages/landing.html")]
struct LandingPage {
    layout: Layout,
}

async fn landing() -> Result<Html<String>> {
    render(&LandingPage {
        layout: Layout::new(),
    })
}

/// One plan on the pricing page. Amounts come from Stripe once billing is wired in.
struct PlanCard {
    key: String,
    name: String,
}

#[derive(Template)]
#[template(path = "pages/pricing.html")]
struct PricingPage {
    layout: Layout,
    plans: Vec<PlanCard>,
}

async fn pricing(State(state): State<AppState>) -> Result<Html<String>> {
    let plans = state
        .config
        .stripe
        .prices
        .iter()
        .map(|price| PlanCard {
            key: price.plan.to_string(),
            name: price.plan.display_name(),
        })
        .collect();
    render(&PricingPage {
        layout: Layout::new(),
        plans,
    })
}

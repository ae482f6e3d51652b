//! What the plans of `STRIPE_PRICES` cost, for `/pricing`: amounts and intervals are Stripe's
//! (a price changed in the dashboard shows without a deploy), fetched at most once an hour
//! across all instances through Redis, and held in memory between.
//!
//! Falling back, in order: fresh memory → fresh Redis → Stripe now → the last values known
//! (memory, then Redis, however old) → the plan names alone. A Stripe or Redis outage thus
//! never fails the pricing page, and costs it at most one Stripe deadline per process (the
//! circuit breaker answers at once after that).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use stripe_product::{Price, price::RetrievePrice};
use time::OffsetDateTime;

use super::stripe::{Patience, Stripe, StripeError};
use crate::{cache::Cache, config::PlanPrice, domain::PlanName};

/// How long fetched prices are used before Stripe is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(3600);
/// The Redis entry outlives its freshness so that it can stand in while Stripe is down.
const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
const CACHE_KEY: &str = "stripe:prices:v1";

/// A recurring price as Stripe describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceFacts {
    /// In the currency's smallest unit; `None` for tiered or metered prices.
    pub unit_amount: Option<i64>,
    pub currency: String,
    pub interval: Option<String>,
    pub interval_count: u32,
}

impl From<Price> for PriceFacts {
    fn from(price: Price) -> Self {
        Self {
            unit_amount: price.unit_amount,
            currency: price.currency.to_string(),
            interval_count: price
                .recurring
                .as_ref()
                .map_or(1, |r| u32::try_from(r.interval_count).unwrap_or(u32::MAX)),
            interval: price.recurring.map(|r| r.interval.as_str().to_owned()),
        }
    }
}

/// Currencies without minor units (Stripe's list).
const ZERO_DECIMAL: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof",
    "xpf",
];

impl PriceFacts {
    /// "$12.00 per month", "€90.00 every 3 months", "¥1200 per year"; `None` when the price
    /// has no single amount to show.
    pub fn in_words(&self) -> Option<String> {
        let money = money(self.unit_amount?, &self.currency);
        Some(match (&self.interval, self.interval_count) {
            (None, _) => money,
            (Some(interval), 1) => format!("{money} per {interval}"),
            (Some(interval), n) => format!("{money} every {n} {interval}s"),
        })
    }
}

/// "$12.00", "€90.00", "¥1200", "12.00 CHF": `amount` in `currency`'s smallest unit.
pub fn money(amount: i64, currency: &str) -> String {
    let currency = currency.to_ascii_lowercase();
    let number = if ZERO_DECIMAL.contains(&currency.as_str()) {
        amount.to_string()
    } else {
        format!("{}.{:02}", amount / 100, (amount % 100).abs())
    };
    match currency.as_str() {
        "usd" => format!("${number}"),
        "eur" => format!("€{number}"),
        "gbp" => format!("£{number}"),
        "jpy" => format!("¥{number}"),
        other => format!("{number} {}", other.to_ascii_uppercase()),
    }
}

/// One plan as `/pricing` shows it.
pub struct Offer {
    pub plan: PlanName,
    /// `None` while Stripe has never been reached (or does not know the price).
    pub price: Option<PriceFacts>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Snapshot {
    /// Unix seconds.
    fetched_at: i64,
    prices: HashMap<String, PriceFacts>,
}

impl Snapshot {
    fn is_fresh(&self, now: OffsetDateTime) -> bool {
        now.unix_timestamp() - self.fetched_at < FRESH_FOR.as_secs().cast_signed()
    }
}

/// The price list of `STRIPE_PRICES`, cached.
pub struct Catalog {
    plans: Vec<PlanPrice>,
    stripe: Option<Stripe>,
    cache: Cache,
    last_known: RwLock<Option<Arc<Snapshot>>>,
    /// One refresh at a time per process; the others use what is known meanwhile.
    refreshing: tokio::sync::Mutex<()>,
}

impl Catalog {
    pub fn new(plans: Vec<PlanPrice>, stripe: Option<Stripe>, cache: Cache) -> Self {
        Self {
            plans,
            stripe,
            cache,
            last_known: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Every plan, with its price when one is known.
    pub async fn offers(&self) -> Vec<Offer> {
        let snapshot = self.snapshot().await;
        self.plans
            .iter()
            .map(|plan| Offer {
                plan: plan.plan.clone(),
                price: snapshot
                    .as_ref()
                    .and_then(|s| s.prices.get(&plan.price_id))
                    .cloned(),
            })
            .collect()
    }

    /// Every known price by its id (the operator console's revenue).
    pub async fn prices_by_id(&self) -> HashMap<String, PriceFacts> {
        self.snapshot()
            .await
            .map(|snapshot| snapshot.prices.clone())
            .unwrap_or_default()
    }

    async fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let stripe = self.stripe.as_ref()?;
        let now = OffsetDateTime::now_utc();
        let in_memory = self.remembered();
        if in_memory.as_ref().is_some_and(|s| s.is_fresh(now)) || self.plans.is_empty() {
            return in_memory;
        }
        // Another request is refreshing: do not queue behind it if there is anything to show.
        let _refresh = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) if in_memory.is_some() => return in_memory,
            Err(_) => self.refreshing.lock().await,
        };
        // Whoever held the lock may have refreshed already.
        if let Some(fresh) = self.remembered().filter(|s| s.is_fresh(now)) {
            return Some(fresh);
        }
        let from_redis = self.read_redis().await;
        if let Some(fresh) = from_redis.clone().filter(|s| s.is_fresh(now)) {
            return Some(self.remember(fresh));
        }
        match self.fetch(stripe, now).await {
            Ok(fetched) => {
                self.write_redis(&fetched).await;
                Some(self.remember(fetched))
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot fetch prices from Stripe; showing the last known");
                in_memory.or_else(|| from_redis.map(|s| self.remember(s)))
            }
        }
    }

    fn remembered(&self) -> Option<Arc<Snapshot>> {
        self.last_known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        *self
            .last_known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot.clone());
        snapshot
    }

    /// Every configured price from Stripe. A price Stripe does not know (a typo in
    /// `STRIPE_PRICES`) is left out and logged; an outage fails the whole fetch.
    async fn fetch(&self, stripe: &Stripe, now: OffsetDateTime) -> Result<Snapshot, StripeError> {
        let mut prices = HashMap::new();
        for plan in &self.plans {
            let request = RetrievePrice::new(plan.price_id.as_str());
            match stripe
                .read("price.retrieve", &request, Patience::Interactive)
                .await
            {
                Ok(price) => {
                    prices.insert(plan.price_id.clone(), price.into());
                }
                Err(error) if !error.is_outage() => {
                    tracing::error!(plan = %plan.plan, price = plan.price_id, %error, "STRIPE_PRICES names a price Stripe cannot give");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Snapshot {
            fetched_at: now.unix_timestamp(),
            prices,
        })
    }

    async fn read_redis(&self) -> Option<Snapshot> {
        let mut connection = self.cache.connection();
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.cache.key(CACHE_KEY))
            .query_async(&mut connection)
            .await
            .inspect_err(|error| tracing::warn!(%error, "cannot read cached prices from Redis"))
            .ok()?;
        serde_json::from_str(&raw?).ok()
    }

    async fn write_redis(&self, snapshot: &Snapshot) {
        let Ok(json) = serde_json::to_string(snapshot) else {
            return;
        };
        let mut connection = self.cache.connection();
        let written: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.cache.key(CACHE_KEY))
            .arg(json)
            .arg("EX")
            .arg(KEEP_FOR.as_secs())
            .query_async(&mut connection)
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "cannot cache prices in Redis");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(amount: Option<i64>, currency: &str, interval: Option<&str>, count: u32) -> PriceFacts {
        PriceFacts {
            unit_amount: amount,
            currency: currency.to_owned(),
            interval: interval.map(str::to_owned),
            interval_count: count,
        }
    }

    #[test]
    fn prices_read_as_people_write_them() {
        let cases = [
            (price(Some(1200), "usd", Some("month"), 1), "$12.00 per month"),
            (
                price(Some(9005), "eur", Some("month"), 3),
                "€90.05 every 3 months",
            ),
            (price(Some(1200), "jpy", Some("year"), 1), "¥1200 per year"),
            (price(Some(4999), "chf", None, 1), "49.99 CHF"),
            (price(Some(5), "gbp", Some("week"), 1), "£0.05 per week"),
        ];
        for (facts, words) in cases {
            assert_eq!(facts.in_words().as_deref(), Some(words));
        }
        assert_eq!(price(None, "usd", Some("month"), 1).in_words(), None);
    }

    #[test]
    fn stripe_price_objects_are_read_with_fields_unknown_to_async_stripe() {
        let raw = r#"{"id":"price_1","object":"price","active":true,"billing_scheme":"per_unit",
                      "created":1763000000,"currency":"usd","livemode":false,"metadata":{},
                      "product":"prod_1","type":"recurring","unit_amount":1200,
                      "recurring":{"interval":"month","interval_count":1,"usage_type":"licensed","meter":null},
                      "tiers_mode":null,"some_future_field":{"x":1}}"#;
        let facts: PriceFacts = miniserde::json::from_str::<Price>(raw).unwrap().into();
        assert_eq!(facts, price(Some(1200), "usd", Some("month"), 1));
    }
}

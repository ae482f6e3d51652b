//! Who may use paid features, computed at request time from the subscription keel holds and
//! `GRACE_PERIOD_DAYS` (so the grace period ends on time without any job running).
//!
//! SPEC: entitled while `active` or `trialing`, and while `past_due` until the grace period
//! (counted from the first failed payment) ends. Not entitled: no subscription, `incomplete`,
//! `incomplete_expired`, `unpaid`, `canceled`, `paused`, or past the grace period. A grace
//! period of 0 days stops access at the first failure. A feature sold on some plans only also
//! asks which plan the subscription is for ([`Subscription::entitled_to`]).

use std::time::Duration;

use time::OffsetDateTime;

use crate::{
    config::PlanPrice,
    domain::{PlanName, SubscriptionStatus},
};

/// A team's subscription as keel holds it (loaded with the session, shown on `/billing`).
#[derive(Clone, Debug)]
pub struct Subscription {
    pub status: SubscriptionStatus,
    pub price_id: Option<String>,
    pub current_period_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    /// First failed payment of the current dunning run; `None` in good standing.
    pub payment_failed_at: Option<OffsetDateTime>,
    /// Stripe's `created` of the event the status comes from.
    pub state_as_of: OffsetDateTime,
}

impl Subscription {
    /// When paid access ends because of failed payments, if it does.
    pub fn access_ends_at(&self, grace: Duration) -> Option<OffsetDateTime> {
        self.payment_failed_at.map(|failed| failed + grace)
    }

    pub fn entitled(&self, grace: Duration, now: OffsetDateTime) -> bool {
        let within_grace = match self.access_ends_at(grace) {
            Some(ends) => now < ends,
            // past_due with no failed invoice known (its event is late or was lost): the grace
            // period counts from when the subscription went past due.
            None if self.status == SubscriptionStatus::PastDue => now < self.state_as_of + grace,
            None => true,
        };
        self.status.may_entitle() && within_grace
    }

    /// The plan this subscription is for: the `STRIPE_PRICES` entry selling its price; `None`
    /// for a price keel is not configured with (an old price, one added in Stripe only).
    pub fn plan<'p>(&self, prices: &'p [PlanPrice]) -> Option<&'p PlanName> {
        let price_id = self.price_id.as_deref()?;
        prices
            .iter()
            .find(|price| price.price_id == price_id)
            .map(|price| &price.plan)
    }

    /// Entitled, and on one of `plans` (names as in `STRIPE_PRICES`): the decision behind
    /// `RequirePlan`.
    pub fn entitled_to(
        &self,
        plans: &[&str],
        prices: &[PlanPrice],
        grace: Duration,
        now: OffsetDateTime,
    ) -> bool {
        let on_plan = self
            .plan(prices)
            .is_some_and(|plan| plans.contains(&plan.as_str()));
        on_plan && self.entitled(grace, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn subscription(status: &str, failed_days_ago: Option<u64>, now: OffsetDateTime) -> Subscription {
        Subscription {
            status: SubscriptionStatus::parse(status),
            price_id: None,
            current_period_end: None,
            cancel_at_period_end: false,
            payment_failed_at: failed_days_ago.map(|days| now - DAY * u32::try_from(days).unwrap()),
            state_as_of: now - DAY,
        }
    }

    #[test]
    fn entitlement_follows_the_spec() {
        let now = OffsetDateTime::now_utc();
        let grace = 7 * DAY;
        for status in ["active", "trialing", "past_due"] {
            assert!(subscription(status, None, now).entitled(grace, now), "{status}");
            assert!(
                subscription(status, Some(6), now).entitled(grace, now),
                "{status} within grace"
            );
            assert!(
                !subscription(status, Some(7), now).entitled(grace, now),
                "{status} grace over"
            );
        }
        for status in [
            "unpaid",
            "canceled",
            "incomplete",
            "incomplete_expired",
            "paused",
            "new_status",
        ] {
            assert!(!subscription(status, None, now).entitled(grace, now), "{status}");
        }
    }

    fn prices() -> Vec<PlanPrice> {
        [("pro", "price_pro"), ("team", "price_team")]
            .map(|(plan, price_id)| PlanPrice {
                plan: PlanName::parse(plan).unwrap(),
                price_id: price_id.to_owned(),
                per_seat: false,
            })
            .to_vec()
    }

    #[test]
    fn a_plan_gated_feature_refuses_a_team_on_another_plan() {
        let now = OffsetDateTime::now_utc();
        let grace = 7 * DAY;
        let prices = prices();
        let mut on_pro = subscription("active", None, now);
        on_pro.price_id = Some("price_pro".to_owned());
        assert_eq!(on_pro.plan(&prices).map(PlanName::as_str), Some("pro"));
        assert!(on_pro.entitled_to(&["pro", "team"], &prices, grace, now));
        assert!(
            !on_pro.entitled_to(&["team"], &prices, grace, now),
            "another plan"
        );
        assert!(!on_pro.entitled_to(&[], &prices, grace, now));

        let mut canceled_team = subscription("canceled", None, now);
        canceled_team.price_id = Some("price_team".to_owned());
        assert!(
            !canceled_team.entitled_to(&["team"], &prices, grace, now),
            "not entitled"
        );

        let mut unknown_price = subscription("active", None, now);
        unknown_price.price_id = Some("price_gone".to_owned());
        assert_eq!(unknown_price.plan(&prices), None);
        assert!(!unknown_price.entitled_to(&["pro", "team"], &prices, grace, now));
        assert_eq!(subscription("active", None, now).plan(&prices), None, "no price");
    }

    #[test]
    fn a_zero_grace_period_stops_access_at_the_first_failure() {
        let now = OffsetDateTime::now_utc();
        assert!(!subscription("past_due", Some(0), now).entitled(Duration::ZERO, now));
        assert!(!subscription("past_due", None, now).entitled(Duration::ZERO, now));
        let mut long_past_due = subscription("past_due", None, now);
        long_past_due.state_as_of = now - 30 * DAY;
        assert!(
            !long_past_due.entitled(7 * DAY, now),
            "no failure known: grace from past_due"
        );
        assert!(!subscription("active", Some(0), now).entitled(Duration::ZERO, now));
        assert!(subscription("active", None, now).entitled(Duration::ZERO, now));
    }

    #[test]
    fn access_ends_a_grace_period_after_the_first_failure() {
        let now = OffsetDateTime::now_utc();
        let late = subscription("past_due", Some(2), now);
        assert_eq!(late.access_ends_at(7 * DAY), Some(now - 2 * DAY + 7 * DAY));
        assert_eq!(subscription("active", None, now).access_ends_at(7 * DAY), None);
        assert_eq!(late.status.in_words(), "Past due");
    }
}

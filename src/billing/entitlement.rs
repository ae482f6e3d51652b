//! Who may use paid features, computed at request time from the subscription keel holds and
//! `GRACE_PERIOD_DAYS` (so the grace period ends on time without any job running).
//!
//! SPEC: entitled while `active` or `trialing`, and while `past_due` until the grace period
//! (counted from the first failed payment) ends. Not entitled: no subscription, `incomplete`,
//! `incomplete_expired`, `unpaid`, `canceled`, `paused`, or past the grace period. A grace
//! period of 0 days stops access at the first failure.

use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::SubscriptionStatus;

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

//! A Stripe subscription's status, and what keel makes of it: who may use paid features, the
//! order of a subscription's stages, and the words `/billing` shows. The SQL that filters on
//! statuses binds the lists made here (`status = ANY($1)`), so no query spells them again.

use std::{fmt, str::FromStr, sync::LazyLock};

/// Stripe's `subscription.status`. Read leniently: a status Stripe adds later is
/// [`SubscriptionStatus::Unknown`] (never entitled, the last stage), not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Incomplete,
    Trialing,
    Active,
    PastDue,
    Unpaid,
    Paused,
    Canceled,
    IncompleteExpired,
    /// A status this version of keel does not know.
    Unknown,
}

impl SubscriptionStatus {
    pub const ALL: [Self; 9] = [
        Self::Incomplete,
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Unpaid,
        Self::Paused,
        Self::Canceled,
        Self::IncompleteExpired,
        Self::Unknown,
    ];

    /// Stripe's word for it (`unknown` for [`SubscriptionStatus::Unknown`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
            Self::Canceled => "canceled",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Unknown => "unknown",
        }
    }

    /// Any text: Stripe's words, whatever their case or surrounding space; anything else is
    /// `Unknown`.
    pub fn parse(raw: &str) -> Self {
        let raw = raw.trim();
        Self::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(raw))
            .unwrap_or(Self::Unknown)
    }

    /// SPEC: `active` and `trialing` entitle to paid features, and `past_due` until the grace
    /// period ends (`billing::entitlement` counts it); every other status does not.
    pub const fn may_entitle(self) -> bool {
        matches!(self, Self::Active | Self::Trialing | Self::PastDue)
    }

    /// Over for good: the team may subscribe again.
    pub const fn has_ended(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }

    /// Where the status comes in a subscription's life. Of two states Stripe reports in the
    /// same second (its `created` has no finer grain), the later stage wins.
    pub const fn stage(self) -> i32 {
        match self {
            Self::Incomplete => 0,
            Self::Trialing => 1,
            Self::Active => 2,
            Self::PastDue => 3,
            Self::Unpaid | Self::Paused => 4,
            Self::Canceled | Self::IncompleteExpired | Self::Unknown => 5,
        }
    }

    /// How `/billing` names it.
    pub const fn in_words(self) -> &'static str {
        match self {
            Self::Incomplete => "Incomplete",
            Self::Trialing => "Trialing",
            Self::Active => "Active",
            Self::PastDue => "Past due",
            Self::Unpaid => "Unpaid",
            Self::Paused => "Paused",
            Self::Canceled => "Canceled",
            Self::IncompleteExpired => "Expired",
            Self::Unknown => "Unknown",
        }
    }

    /// The statuses that may entitle, for SQL (`status = ANY($1)`).
    pub fn entitling_sql() -> &'static [String] {
        static LIST: LazyLock<Vec<String>> = LazyLock::new(|| sql_list(SubscriptionStatus::may_entitle));
        &LIST
    }

    /// The statuses that have ended, for SQL (`status = ANY($1)`).
    pub fn ended_sql() -> &'static [String] {
        static LIST: LazyLock<Vec<String>> = LazyLock::new(|| sql_list(SubscriptionStatus::has_ended));
        &LIST
    }

    /// Every status with its stage, as two parallel SQL arrays (for `unnest($1, $2)`).
    pub fn stages_sql() -> (&'static [String], &'static [i32]) {
        static STATUSES: LazyLock<Vec<String>> = LazyLock::new(|| sql_list(|_| true));
        static STAGES: LazyLock<Vec<i32>> =
            LazyLock::new(|| SubscriptionStatus::ALL.map(SubscriptionStatus::stage).to_vec());
        (&STATUSES, &STAGES)
    }
}

fn sql_list(keep: fn(SubscriptionStatus) -> bool) -> Vec<String> {
    SubscriptionStatus::ALL
        .into_iter()
        .filter(|status| keep(*status))
        .map(|status| status.as_str().to_owned())
        .collect()
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriptionStatus {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(raw))
    }
}

super::text_column!(SubscriptionStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_words_round_trip_and_anything_else_is_unknown() {
        for status in SubscriptionStatus::ALL {
            assert_eq!(SubscriptionStatus::parse(status.as_str()), status);
        }
        assert_eq!(
            SubscriptionStatus::parse(" Past_Due "),
            SubscriptionStatus::PastDue
        );
        for other in ["", "new_status", "active!", "\u{0}", "pästdue"] {
            assert_eq!(
                SubscriptionStatus::parse(other),
                SubscriptionStatus::Unknown,
                "{other:?}"
            );
        }
    }

    #[test]
    fn only_active_trialing_and_past_due_may_entitle() {
        assert_eq!(
            SubscriptionStatus::entitling_sql(),
            ["trialing", "active", "past_due"]
        );
        assert_eq!(
            SubscriptionStatus::ended_sql(),
            ["canceled", "incomplete_expired"]
        );
        let (statuses, stages) = SubscriptionStatus::stages_sql();
        assert_eq!(statuses.len(), stages.len());
        assert!(statuses.iter().any(|status| status == "unknown"));
    }

    #[test]
    fn stages_follow_a_subscription_s_life() {
        use SubscriptionStatus::*;
        let life = [Incomplete, Trialing, Active, PastDue, Unpaid, Canceled];
        assert!(life.windows(2).all(|pair| pair[0].stage() < pair[1].stage()));
        assert_eq!(Paused.stage(), Unpaid.stage());
        assert_eq!(Unknown.stage(), Canceled.stage());
    }

    #[test]
    fn billing_names_each_status_in_words() {
        let words = SubscriptionStatus::ALL.map(SubscriptionStatus::in_words);
        for spec in [
            "Active",
            "Trialing",
            "Past due",
            "Unpaid",
            "Canceled",
            "Incomplete",
        ] {
            assert!(words.contains(&spec), "{spec}");
        }
    }
}

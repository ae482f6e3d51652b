//! The name of a paid plan as it appears in `STRIPE_PRICES` and in URLs (`pro`, `team`).

use std::fmt;

/// A plan name: 1–32 characters of lower-case ASCII letters, digits, `-` or `_`, starting
/// with a letter. Safe to put in a URL or a log line as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlanName(String);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a plan name is 1 to 32 lower-case letters, digits, - or _, starting with a letter")]
pub struct InvalidPlanName;

impl PlanName {
    pub fn parse(raw: &str) -> Result<Self, InvalidPlanName> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        let starts_with_letter = raw.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if raw.len() <= 32 && valid_chars && starts_with_letter {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidPlanName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How the plan is shown to people: `pro` → `Pro`, `team-plus` → `Team plus`.
    pub fn display_name(&self) -> String {
        let spaced = self.0.replace(['-', '_'], " ");
        let mut chars = spaced.chars();
        match chars.next() {
            Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
            None => String::new(),
        }
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_url_safe_lower_case_names() {
        for ok in ["pro", "team", "team-plus", "v2_annual", "a"] {
            assert_eq!(PlanName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        let too_long = "p".repeat(33);
        for bad in [
            "",
            "Pro",
            "2pro",
            "-pro",
            "pro plan",
            "pro/../x",
            "pró",
            "<b>",
            too_long.as_str(),
        ] {
            assert_eq!(PlanName::parse(bad), Err(InvalidPlanName), "{bad:?}");
        }
    }

    #[test]
    fn display_name_reads_well() {
        assert_eq!(PlanName::parse("pro").unwrap().display_name(), "Pro");
        assert_eq!(PlanName::parse("team_plus").unwrap().display_name(), "Team plus");
    }
}

/// Properties of `PlanName::parse` (plan names come from configuration and from URLs).
#[cfg(test)]
mod properties {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// `[a-z][a-z0-9_-]{0,31}`, written out.
    fn is_plan_name(raw: &str) -> bool {
        let bytes = raw.as_bytes();
        (1..=32).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes[1..]
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }

    /// Mostly names from the plan alphabet and its near misses, of lengths around the limit.
    fn name_like() -> impl Strategy<Value = String> {
        let alphabet: Vec<char> = ('a'..='z')
            .chain('0'..='9')
            .chain("-_".chars())
            .chain("A Z./é\u{0}\u{17f}K".chars())
            .collect();
        prop_oneof![
            3 => vec(prop::sample::select(alphabet), 0..36).prop_map(String::from_iter),
            1 => vec(any::<char>(), 0..36).prop_map(String::from_iter),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config(2048))]

        /// Accepted exactly when the text is `[a-z][a-z0-9_-]{0,31}`, kept as is, and shown as
        /// a capitalised name of the same length without `-` or `_`.
        #[test]
        fn accepted_exactly_when_the_grammar_matches(raw in name_like()) {
            let parsed = PlanName::parse(&raw);
            prop_assert_eq!(parsed.is_ok(), is_plan_name(&raw), "{:?}", raw);
            if let Ok(plan) = parsed {
                prop_assert_eq!(plan.as_str(), raw.as_str());
                prop_assert_eq!(plan.to_string(), raw.clone());
                let shown = plan.display_name();
                prop_assert_eq!(shown.len(), raw.len());
                prop_assert!(shown.starts_with(|c: char| c.is_ascii_uppercase()), "{:?}", shown);
                prop_assert!(!shown.contains(['-', '_']), "{:?}", shown);
            }
        }
    }
}

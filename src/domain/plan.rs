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

//! A team's name as someone typed it.

/// 1 to 80 characters once surrounding spaces are removed, none of them a control character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamName(String);

impl TeamName {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("Give the team a name.");
        }
        if name.chars().count() > 80 {
            return Err("Keep the name to 80 characters.");
        }
        if name.chars().any(char::is_control) {
            return Err("The name cannot hold line breaks or other control characters.");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(TeamName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert!(TeamName::parse("   ").is_err());
        assert!(TeamName::parse(&"x".repeat(81)).is_err());
        assert!(TeamName::parse(&"é".repeat(80)).is_ok());
        assert!(TeamName::parse("a\nb").is_err());
    }
}

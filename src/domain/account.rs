//! What a person types into the account forms: an email address and a new password.

use std::{fmt, str::FromStr};

/// An email address as typed (surrounding spaces removed), checked for the syntax of an
/// address mail can be sent to. Two addresses that differ only in case are the same account.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    #[error("Enter your email address.")]
    Empty,
    #[error("Enter an email address like name@example.com.")]
    Malformed,
}

impl EmailAddress {
    /// The longest address SMTP can carry (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidEmail::Empty);
        }
        let has_domain_dot = trimmed
            .rsplit_once('@')
            .is_some_and(|(_, domain)| domain.contains('.'));
        if trimmed.len() > Self::MAX_LEN || !has_domain_dot || lettre::Address::from_str(trimmed).is_err() {
            return Err(InvalidEmail::Malformed);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used to compare addresses and to key per-account throttling.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }

    /// The part before `@`, used to name a new user's personal team.
    pub fn local_part(&self) -> &str {
        self.0
            .rsplit_once('@')
            .map_or(self.0.as_str(), |(local, _)| local)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({:?})", self.0)
    }
}

/// A password someone chose: 8 to 128 characters, and not their email address.
/// Its `Debug` never shows the value.
pub struct NewPassword(String);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("Use at least {} characters.", NewPassword::MIN_CHARS)]
    TooShort,
    #[error("Use at most {} characters.", NewPassword::MAX_CHARS)]
    TooLong,
    #[error("Choose a password that is not your email address.")]
    IsEmail,
}

impl NewPassword {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: String, email: &str) -> Result<Self, WeakPassword> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            Err(WeakPassword::TooShort)
        } else if chars > Self::MAX_CHARS {
            Err(WeakPassword::TooLong)
        } else if raw.trim().to_lowercase() == email.trim().to_lowercase() {
            Err(WeakPassword::IsEmail)
        } else {
            Ok(Self(raw))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_compared_without_case() {
        let email = EmailAddress::parse("  Alice@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "Alice@Example.COM");
        assert_eq!(email.normalized(), "alice@example.com");
        assert_eq!(email.local_part(), "Alice");
    }

    #[test]
    fn malformed_addresses_are_refused() {
        assert_eq!(EmailAddress::parse("   "), Err(InvalidEmail::Empty));
        for raw in [
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "a b@example.com",
            "alice@exa mple.com",
            "<script>@example.com",
            "alice@example.com\r\nBcc: x@example.com",
            "alice\0@example.com",
        ] {
            assert_eq!(EmailAddress::parse(raw), Err(InvalidEmail::Malformed), "{raw:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(EmailAddress::parse(&long), Err(InvalidEmail::Malformed));
    }

    #[test]
    fn password_rules() {
        let email = "alice@example.com";
        assert_eq!(
            NewPassword::parse("short".into(), email).unwrap_err(),
            WeakPassword::TooShort
        );
        assert!(
            NewPassword::parse("é".repeat(8), email).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            NewPassword::parse("x".repeat(129), email).unwrap_err(),
            WeakPassword::TooLong
        );
        assert!(NewPassword::parse("x".repeat(128), email).is_ok());
        assert_eq!(
            NewPassword::parse("ALICE@example.com".into(), email).unwrap_err(),
            WeakPassword::IsEmail
        );
        let password = NewPassword::parse("correct horse battery".into(), email).unwrap();
        assert_eq!(password.expose(), "correct horse battery");
        assert_eq!(format!("{password:?}"), "NewPassword([REDACTED])");
    }
}

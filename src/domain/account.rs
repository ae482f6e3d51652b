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

/// Properties of the form parsers over anything a person (or a bot) can type.
#[cfg(test)]
mod properties {
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// Text glued from the pieces addresses are made of, near misses, and any character.
    fn address_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => prop::sample::select(vec![
                "alice", "Bob", "x", "a.b", "+tag", "@", "@", ".", ".", "example", "com", "co.uk",
                "\"", "\\", " ", "\t", "\r\n", "\0", "[", "]", "127.0.0.1", "IPv6:", "::1", "-",
                "é", "例え", "xn--", "\u{85}", "\u{a0}", "\u{2028}", "\u{ff0e}", "<", ">", ",",
                "%", "!#$&'*/=?^_`{|}~", "Bcc: x@example.com",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ];
        vec(piece, 0..14).prop_map(|pieces| pieces.concat())
    }

    fn any_text(max: usize) -> impl Strategy<Value = String> {
        vec(any::<char>(), 0..max).prop_map(String::from_iter)
    }

    /// `local@label.label…`, from the characters every mail system takes.
    fn plain_address() -> impl Strategy<Value = String> {
        let atext: Vec<char> = ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .chain("+-_".chars())
            .collect();
        let label: Vec<char> = ('a'..='z').chain('0'..='9').collect();
        (
            vec(vec(prop::sample::select(atext), 1..12), 1..3),
            vec(vec(prop::sample::select(label), 1..12), 2..4),
        )
            .prop_map(|(local, domain)| {
                let join = |parts: Vec<Vec<char>>| {
                    parts
                        .into_iter()
                        .map(String::from_iter)
                        .collect::<Vec<_>>()
                        .join(".")
                };
                format!("{}@{}", join(local), join(domain))
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config(1024))]

        /// Any text: an answer, never a panic; whatever is accepted is the trimmed input,
        /// 1 to 254 bytes, `local@domain` with a dot in the domain, with no ASCII control
        /// character but tab (no header injection), and parses again to itself.
        #[test]
        fn accepted_addresses_keep_their_invariants(
            raw in prop_oneof![address_like(), any_text(40)],
            pad in prop::sample::select(vec!["", " ", "\t", "\n ", "\u{3000}"]),
        ) {
            let padded = format!("{pad}{raw}{pad}");
            let parsed = EmailAddress::parse(&padded);
            prop_assert_eq!(&parsed, &EmailAddress::parse(&raw));
            match parsed {
                Ok(email) => {
                    let text = email.as_str();
                    prop_assert_eq!(text, raw.trim());
                    prop_assert!(!text.is_empty() && text.len() <= EmailAddress::MAX_LEN);
                    let (local, domain) = text.rsplit_once('@').unwrap();
                    prop_assert_eq!(email.local_part(), local);
                    prop_assert!(!local.is_empty() && domain.contains('.'));
                    prop_assert!(
                        !text.bytes().any(|b| b.is_ascii_control() && b != b'\t'),
                        "{:?}",
                        text
                    );
                    prop_assert_eq!(email.normalized(), text.to_lowercase());
                    prop_assert_eq!(EmailAddress::parse(text), Ok(email.clone()));
                }
                Err(InvalidEmail::Empty) => prop_assert!(raw.trim().is_empty()),
                Err(InvalidEmail::Malformed) => prop_assert!(!raw.trim().is_empty()),
            }
        }

        /// Plain addresses are accepted as typed, unless too long.
        #[test]
        fn plain_addresses_are_accepted(address in plain_address()) {
            let parsed = EmailAddress::parse(&address);
            if address.len() <= EmailAddress::MAX_LEN {
                prop_assert_eq!(parsed.map(|email| email.as_str().to_owned()), Ok(address));
            } else {
                prop_assert_eq!(parsed, Err(InvalidEmail::Malformed));
            }
        }

        /// The password rules, in their order: 8 to 128 characters (not bytes), then not the
        /// email address (ignoring case and surrounding spaces); kept exactly as typed, and
        /// never shown by `Debug`.
        #[test]
        fn passwords_follow_the_rules(
            raw in prop_oneof![any_text(140), address_like()],
            email in prop_oneof![address_like(), Just("alice@example.com".to_owned())],
            same_as_email in any::<bool>(),
        ) {
            let raw = if same_as_email { format!(" {} ", email.to_uppercase()) } else { raw };
            let chars = raw.chars().count();
            let expected = if chars < NewPassword::MIN_CHARS {
                Err(WeakPassword::TooShort)
            } else if chars > NewPassword::MAX_CHARS {
                Err(WeakPassword::TooLong)
            } else if raw.trim().to_lowercase() == email.trim().to_lowercase() {
                Err(WeakPassword::IsEmail)
            } else {
                Ok(())
            };
            let parsed = NewPassword::parse(raw.clone(), &email);
            prop_assert_eq!(parsed.as_ref().map(|_| ()), expected.as_ref().copied());
            if let Ok(password) = parsed {
                prop_assert_eq!(password.expose(), raw.as_str());
                let shown = format!("{password:?}");
                prop_assert!(shown == "NewPassword([REDACTED])");
            }
        }
    }
}

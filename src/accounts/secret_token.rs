//! Random bearer tokens (session cookies, emailed links) and the digest kept in their place.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

/// 256 random bits, written as 43 URL-safe base64 characters. Only its SHA-256 is stored, so
/// the database never holds a usable token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

/// Length of a token's text form.
const TEXT_LEN: usize = 43;

impl SecretToken {
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A token as a client sent it back; anything that cannot be one of ours is `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        let well_formed = raw.len() == TEXT_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the database keeps.
    pub fn digest(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        let token = SecretToken::generate();
        assert_eq!(token.as_str().len(), TEXT_LEN);
        assert_eq!(SecretToken::parse(token.as_str()), Some(token.clone()));
        assert_ne!(token, SecretToken::generate());
        assert_eq!(token.digest().len(), 32);
        assert_eq!(format!("{token:?}"), "SecretToken([REDACTED])");
        for junk in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", "a".repeat(42)),
            &"é".repeat(21),
        ] {
            assert_eq!(SecretToken::parse(junk), None, "{junk:?}");
        }
    }
}

//! Two-factor sign-in (SPEC, "Account security and lifecycle"): TOTP codes (RFC 6238:
//! SHA-1, 6 digits, 30 s, ±1 step, through `totp-rs`) and 10 single-use recovery codes.
//!
//! - The TOTP secret is stored sealed (AES-256-GCM, ring) with a key derived from
//!   `SECRET_KEY`: a copy of the database does not give the codes away.
//! - A code is accepted once: the step of the last accepted code is kept, and a code is taken
//!   only with a compare-and-set to a later step, so a replay (even in parallel) is refused.
//! - Recovery codes are random (60 bits), stored as SHA-256, and marked used in one statement.
//! - A login with a right password for a 2FA user starts a pending login (5 minutes, its
//!   token in an HttpOnly cookie: bound to that browser), not a session; the code step is
//!   throttled with the password's per-account backoff.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use qrcode::{QrCode, render::svg};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use totp_rs::{Builder, Totp};
use uuid::Uuid;

use super::{
    AccountKey, Accounts, PasswordRefused, SecretToken, Session, security,
    sessions::{self, Device},
};
use crate::{config::SecretKey, error::Result};

/// How long a half-done login waits for its code.
pub const PENDING_LOGIN_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Recovery codes issued when 2FA is turned on.
const RECOVERY_CODES: usize = 10;

/// Seals and opens TOTP secrets.
#[derive(Clone)]
pub struct SecretSealer(std::sync::Arc<LessSafeKey>);

impl SecretSealer {
    pub fn new(secret: &SecretKey) -> Self {
        let key = secret.derive(b"keel totp secrets v1");
        let key = UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("a 32-byte key"));
        Self(std::sync::Arc::new(LessSafeKey::new(key)))
    }

    /// A random nonce, then the secret sealed with its tag.
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut sealed)
            .unwrap_or_else(|_| unreachable!("AES-GCM seals any short input"));
        [nonce.as_slice(), &sealed].concat()
    }

    fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (nonce, sealed) = sealed
            .split_at_checked(NONCE_LEN)
            .context("a sealed secret too short")?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("a bad nonce"))?;
        let mut buffer = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::empty(), &mut buffer)
            .map_err(|_| anyhow::anyhow!("a TOTP secret that does not open: was SECRET_KEY changed?"))?;
        Ok(plain.to_vec())
    }
}

/// The TOTP of `secret` for the account `email`.
fn totp(secret: Vec<u8>, email: &str) -> anyhow::Result<Totp> {
    Builder::new()
        .with_secret(secret)
        .with_account_name(email)
        .with_issuer(Some(crate::NAME))
        .build()
        .map_err(|error| anyhow::anyhow!("building a TOTP: {error:?}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What the enrolment page shows: the QR code (SVG) and the same as text.
pub struct Enrolment {
    pub uri: String,
    pub qr_svg: String,
}

/// A second factor as typed on `/login/2fa`.
pub enum SecondFactor<'a> {
    Code(&'a str),
    RecoveryCode(&'a str),
}

/// Why a second factor was not accepted.
#[derive(Debug)]
pub enum CodeRefused {
    /// Wrong, replayed, malformed, or (for recovery codes) used already.
    Wrong,
    /// No enrolment to confirm, or no half-done login (expired, or never started).
    NothingPending,
    /// Too many wrong codes or passwords for this account: try again after this long.
    Locked(Duration),
}

/// A recovery code as typed, compared without case, spaces or dashes.
fn recovery_digest(code: &str) -> Vec<u8> {
    let normalized: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(normalized.as_bytes()).to_vec()
}

/// Ten random codes, `xxxxx-xxxxx` of lower-case letters and digits without look-alikes.
fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: Vec<char> = (0..10)
                .map(|_| char::from(ALPHABET[usize::from(rand::random::<u8>()) % ALPHABET.len()]))
                .collect();
            format!(
                "{}-{}",
                chars[..5].iter().collect::<String>(),
                chars[5..].iter().collect::<String>()
            )
        })
        .collect()
}

impl Accounts {
    /// Whether `user_id` signs in with a second factor.
    pub async fn two_factor_enabled(&self, user_id: Uuid) -> Result<bool> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM two_factor WHERE user_id = $1 AND enabled_at IS NOT NULL) AS "on!""#,
            user_id
        )
        .fetch_one(&self.db)
        .await?)
    }

    /// The enrolment of `session`'s user: a new secret the first time, kept (sealed) until
    /// confirmed, so that a reload or a mistyped code shows the same one. `None` when 2FA is on
    /// already.
    pub async fn begin_two_factor(&self, session: &Session) -> Result<Option<Enrolment>> {
        let fresh: [u8; 20] = rand::random();
        let enrolment = sqlx::query!(
            r#"WITH added AS (
                   INSERT INTO two_factor (user_id, secret_sealed) VALUES ($1, $2)
                   ON CONFLICT (user_id) DO NOTHING
                   RETURNING secret_sealed, enabled_at
               )
               SELECT secret_sealed AS "secret_sealed!", enabled_at FROM added
               UNION ALL
               SELECT secret_sealed, enabled_at FROM two_factor WHERE user_id = $1"#,
            session.user_id,
            self.sealer.seal(&fresh),
        )
        .fetch_one(&self.db)
        .await?;
        if enrolment.enabled_at.is_some() {
            return Ok(None);
        }
        let secret = match self.sealer.open(&enrolment.secret_sealed) {
            Ok(secret) => secret,
            // Sealed under an earlier SECRET_KEY: start this enrolment again.
            Err(_) => {
                sqlx::query!(
                    "UPDATE two_factor SET secret_sealed = $2 WHERE user_id = $1 AND enabled_at IS NULL",
                    session.user_id,
                    self.sealer.seal(&fresh),
                )
                .execute(&self.db)
                .await?;
                fresh.to_vec()
            }
        };
        let uri = totp(secret, &session.email)?
            .to_url()
            .map_err(|error| anyhow::anyhow!("an otpauth URI: {error:?}"))?;
        let qr_svg = QrCode::new(uri.as_bytes())
            .context("encoding the QR code")?
            .render::<svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build();
        // The SVG element alone, for inline use in the page (no XML declaration).
        let qr_svg = qr_svg
            .find("<svg")
            .map_or(qr_svg.clone(), |start| qr_svg[start..].to_owned());
        Ok(Some(Enrolment { uri, qr_svg }))
    }

    /// Confirms the enrolment with a code of its secret: 2FA is on, and these recovery codes
    /// (shown once) replace any earlier ones.
    /// Wrong codes count against the password's per-account backoff (`client` goes into the
    /// security log, `bucket` is its rate-limit bucket).
    pub async fn enable_two_factor(
        &self,
        session: &Session,
        code: &str,
        client: IpAddr,
        bucket: IpAddr,
    ) -> Result<Result<Vec<String>, CodeRefused>> {
        let account = AccountKey::user(session.user_id);
        if let Some(wait) = self.throttle.begin(&account, bucket).await {
            return Ok(Err(CodeRefused::Locked(wait)));
        }
        let mut tx = self.db.begin().await?;
        let sealed = sqlx::query_scalar!(
            "SELECT secret_sealed FROM two_factor WHERE user_id = $1 AND enabled_at IS NULL FOR UPDATE",
            session.user_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(sealed) = sealed else {
            return Ok(Err(CodeRefused::NothingPending));
        };
        let Some(step) = self.step_of(&sealed, &session.email, code)? else {
            return Ok(Err(CodeRefused::Wrong));
        };
        sqlx::query!(
            "UPDATE two_factor SET enabled_at = now(), last_step = $2 WHERE user_id = $1",
            session.user_id,
            step.cast_signed(),
        )
        .execute(&mut *tx)
        .await?;
        let codes = new_recovery_codes();
        sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", session.user_id)
            .execute(&mut *tx)
            .await?;
        let digests: Vec<Vec<u8>> = codes.iter().map(|code| recovery_digest(code)).collect();
        sqlx::query!(
            "INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])",
            session.user_id,
            &digests,
        )
        .execute(&mut *tx)
        .await?;
        security::record(
            &mut tx,
            session.user_id,
            security::Event::TwoFactorEnabled,
            Some(client),
        )
        .await?;
        tx.commit().await?;
        self.throttle.succeeded(&account, bucket).await;
        tracing::info!(user_id = %session.user_id, "two-factor sign-in turned on");
        Ok(Ok(codes))
    }

    /// Turns 2FA off, with the password (throttled like a login). `client` is the rate-limit
    /// bucket.
    pub async fn disable_two_factor(
        &self,
        session: &Session,
        password: &str,
        client: IpAddr,
    ) -> Result<Result<(), PasswordRefused>> {
        if let Err(refused) = self.check_password(session.user_id, password, client).await? {
            return Ok(Err(refused));
        }
        let mut tx = self.db.begin().await?;
        sqlx::query!("DELETE FROM two_factor WHERE user_id = $1", session.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", session.user_id)
            .execute(&mut *tx)
            .await?;
        security::record(
            &mut tx,
            session.user_id,
            security::Event::TwoFactorDisabled,
            Some(client),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(user_id = %session.user_id, "two-factor sign-in turned off");
        Ok(Ok(()))
    }

    /// Whether `token` is a half-done login still waiting for its code.
    pub async fn pending_login(&self, token: &SecretToken) -> Result<bool> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pending_logins WHERE id_hash = $1 AND expires_at > now()) AS "pending!""#,
            token.digest()
        )
        .fetch_one(&self.db)
        .await?)
    }

    /// Finishes the half-done login `token` with a second factor: a session on `device` and
    /// where to go next. `client` is the rate-limit bucket.
    pub async fn finish_login(
        &self,
        token: &SecretToken,
        factor: SecondFactor<'_>,
        device: Device<'_>,
        client: IpAddr,
    ) -> Result<Result<(SecretToken, Option<String>), CodeRefused>> {
        let pending = sqlx::query!(
            "SELECT p.user_id, p.team_id, p.next, u.email FROM pending_logins p JOIN users u ON u.id = p.user_id
             WHERE p.id_hash = $1 AND p.expires_at > now()",
            token.digest()
        )
        .fetch_optional(&self.db)
        .await?;
        let Some(pending) = pending else {
            return Ok(Err(CodeRefused::NothingPending));
        };
        let user_id = pending.user_id;
        let account = AccountKey::user(user_id);
        if let Some(wait) = self.throttle.begin(&account, client).await {
            tracing::warn!(%client, %user_id, wait_secs = wait.as_secs(), "2FA code refused: too many failures");
            return Ok(Err(CodeRefused::Locked(wait)));
        }
        let mut tx = self.db.begin().await?;
        if !self
            .second_factor_holds(&mut tx, user_id, &pending.email, &factor)
            .await?
        {
            tx.rollback().await?;
            let mut conn = self.db.acquire().await?;
            security::record(
                &mut conn,
                user_id,
                security::Event::TwoFactorFailed,
                Some(device.client),
            )
            .await?;
            tracing::warn!(client = %device.client, %user_id, "2FA code refused");
            return Ok(Err(CodeRefused::Wrong));
        }
        // Once: of two requests finishing one login, one gets the session.
        let taken = sqlx::query!("DELETE FROM pending_logins WHERE id_hash = $1", token.digest())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if taken == 0 {
            return Ok(Err(CodeRefused::NothingPending));
        }
        let session = sessions::create(
            &mut tx,
            user_id,
            pending.team_id,
            device,
            security::Event::SignedIn,
        )
        .await?;
        tx.commit().await?;
        self.throttle.succeeded(&account, client).await;
        tracing::info!(%user_id, "signed in with a second factor");
        Ok(Ok((session, pending.next)))
    }

    /// The time step `code` is valid for (now, ±1 step) under the sealed secret. A secret
    /// sealed under an earlier `SECRET_KEY` accepts no code (recovery codes still work).
    fn step_of(&self, sealed: &[u8], email: &str, code: &str) -> Result<Option<u64>> {
        let secret = match self.sealer.open(sealed) {
            Ok(secret) => secret,
            Err(error) => {
                tracing::error!(%error, "a TOTP secret does not open: SECRET_KEY changed since it was stored");
                return Ok(None);
            }
        };
        Ok(totp(secret, email)?.check(code.trim(), now()))
    }

    /// Whether `factor` is right for `user_id`, using it up (the code's step, the recovery
    /// code) in `conn`'s transaction.
    async fn second_factor_holds(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        email: &str,
        factor: &SecondFactor<'_>,
    ) -> Result<bool> {
        match factor {
            SecondFactor::Code(code) => {
                let sealed = sqlx::query_scalar!(
                    "SELECT secret_sealed FROM two_factor WHERE user_id = $1 AND enabled_at IS NOT NULL",
                    user_id
                )
                .fetch_optional(&mut *conn)
                .await?;
                let Some(sealed) = sealed else { return Ok(false) };
                let Some(step) = self.step_of(&sealed, email, code)? else {
                    return Ok(false);
                };
                let taken = sqlx::query!(
                    "UPDATE two_factor SET last_step = $2 WHERE user_id = $1 AND last_step < $2",
                    user_id,
                    step.cast_signed(),
                )
                .execute(conn)
                .await?;
                Ok(taken.rows_affected() == 1)
            }
            SecondFactor::RecoveryCode(code) => {
                let used = sqlx::query!(
                    "UPDATE recovery_codes SET used_at = now() WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
                    user_id,
                    recovery_digest(code),
                )
                .execute(conn)
                .await?;
                Ok(used.rows_affected() == 1)
            }
        }
    }
}

/// Starts a half-done login for a 2FA user whose password was right: its token goes into a
/// cookie, and `/login/2fa` finishes it.
pub(super) async fn start_pending_login(
    conn: &mut PgConnection,
    user_id: Uuid,
    team_id: Uuid,
    next: Option<&str>,
) -> Result<SecretToken> {
    let token = SecretToken::generate();
    sqlx::query!(
        "INSERT INTO pending_logins (id_hash, user_id, team_id, next, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        token.digest(),
        user_id,
        team_id,
        next,
        PENDING_LOGIN_LIFETIME.as_secs_f64(),
    )
    .execute(conn)
    .await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let key = SecretKey::random_for_tests();
        let sealer = SecretSealer::new(&key);
        let sealed = sealer.seal(b"twenty bytes secret!");
        assert_eq!(sealer.open(&sealed).unwrap(), b"twenty bytes secret!");
        assert_ne!(
            sealed,
            sealer.seal(b"twenty bytes secret!"),
            "a fresh nonce each time"
        );
        let other = SecretSealer::new(&SecretKey::random_for_tests());
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(sealer.open(&tampered).is_err());
        assert!(sealer.open(&sealed[..5]).is_err());
    }

    #[test]
    fn codes_follow_rfc_6238_and_its_skew() {
        // RFC 6238's SHA-1 test secret; its 8-digit vectors end with these 6 digits.
        let totp = totp(b"12345678901234567890".to_vec(), "a@example.com").unwrap();
        assert_eq!(totp.generate(59).to_string(), "287082");
        assert_eq!(totp.generate(1_111_111_109).to_string(), "081804");
        assert_eq!(totp.check("287082", 59), Some(1));
        assert_eq!(
            totp.check("287082", 59 + 30),
            Some(1),
            "one step late still counts"
        );
        assert_eq!(totp.check("287082", 59 + 60), None, "two steps late does not");
        assert_eq!(totp.check("28708", 59), None);
        assert_eq!(totp.check("abcdef", 59), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_read_forgivingly() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));
        assert_eq!(recovery_digest("abcde-fghjk"), recovery_digest(" ABCDE fghjk "));
        assert_ne!(recovery_digest("abcde-fghjk"), recovery_digest("abcde-fghjm"));
    }
}

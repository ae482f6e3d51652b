//! Accounts: sign-up, login, sessions, email verification and password resets.
//!
//! [`Accounts`] holds what these flows need and is the only code that writes `users`,
//! `sessions` and `auth_tokens`. Each flow is one transaction: a user, their team, their
//! session and the email that tells them about it exist together or not at all. Handlers in
//! `http::auth` parse forms and render pages around it.

pub mod audit;
pub mod deletion;
pub mod email_change;
pub mod export;
pub mod invitations;
pub mod password;
mod secret_token;
pub mod security;
pub mod sessions;
pub mod teams;
pub mod throttle;
pub mod tokens;
pub mod two_factor;

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use self::{
    password::{HashError, Passwords},
    secret_token::SecretToken,
    sessions::{Device, Session},
    throttle::{AccountKey, LoginThrottle},
    tokens::{LinkProblem, Purpose},
};
use crate::{
    cache::Cache,
    config::Config,
    domain::{EmailAddress, NewPassword, Role},
    error::{AppError, Result},
    jobs::{self, Job, JobContext},
    mail::{self, CapKind, Capped, Mailer, PasswordChanged, PasswordReset, VerifyEmail},
};

#[derive(Clone)]
pub struct Accounts {
    db: PgPool,
    mailer: Mailer,
    passwords: Passwords,
    throttle: LoginThrottle,
    /// How long an invitation's link works (`INVITATION_TTL_DAYS`).
    invitation_ttl: Duration,
    /// Seals TOTP secrets (a key derived from `SECRET_KEY`).
    sealer: two_factor::SecretSealer,
}

/// The address is already registered (sign-up).
#[derive(Debug)]
pub struct EmailTaken;

/// How a login attempt ended.
#[derive(Debug)]
pub enum Login {
    /// Signed in: the token goes into the session cookie.
    SignedIn(SecretToken),
    /// The password was right and the user signs in with a second factor: the token of the
    /// half-done login goes into its cookie, and `/login/2fa` asks for the code.
    SecondFactor(SecretToken),
    /// Unknown email or wrong password: the caller cannot tell which, and neither can the user.
    Refused,
    /// Too many recent failures for this email: try again after this long.
    Locked(Duration),
    /// The password was right, but an operator has disabled the account.
    Disabled,
}

/// Why a change that needs the current password (the password, the email address) was
/// refused.
#[derive(Debug)]
pub enum PasswordRefused {
    /// The current password given is wrong.
    WrongPassword,
    /// Too many wrong current passwords (the login throttle): try again after this long.
    Locked(Duration),
}

impl From<HashError> for AppError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => AppError::Unavailable(anyhow::Error::new(error)),
            HashError::Failed(cause) => AppError::Internal(cause),
        }
    }
}

impl Accounts {
    pub fn new(db: PgPool, mailer: Mailer, cache: Cache, config: &Config) -> Self {
        Self {
            db,
            mailer,
            passwords: Passwords::new(),
            throttle: LoginThrottle::new(cache),
            invitation_ttl: config.invitation_ttl,
            sealer: two_factor::SecretSealer::new(&config.secret_key),
        }
    }

    /// Creates the user, their personal team (as owner) and a session, and emails a
    /// verification link (unless the email cap holds it back: the user can ask again). Signing
    /// up through a live team invitation for this address (`invitation`, the link's token)
    /// verifies the address instead: the link reached it.
    pub async fn sign_up(
        &self,
        email: &EmailAddress,
        password: &NewPassword,
        device: Device<'_>,
        invitation: Option<&SecretToken>,
    ) -> Result<Result<SecretToken, EmailTaken>> {
        // Hash before looking: a taken address costs the same time as a free one.
        let password_hash = self.passwords.hash(password).await?;
        let mut tx = self.db.begin().await?;
        let user_id = sqlx::query_scalar!(
            "INSERT INTO users (email, password_hash) VALUES ($1, $2)
             ON CONFLICT ((lower(email))) DO NOTHING
             RETURNING id",
            email.as_str(),
            password_hash,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_id) = user_id else {
            return Ok(Err(EmailTaken));
        };
        let team_id =
            teams::insert_owned_by(&mut tx, user_id, &teams::personal_team_name(email.as_str())).await?;
        let invited = match invitation {
            Some(token) => invitations::vouches_for(&mut tx, token, email.as_str()).await?,
            None => false,
        };
        if invited {
            sqlx::query!(
                "UPDATE users SET email_verified_at = now() WHERE id = $1",
                user_id
            )
            .execute(&mut *tx)
            .await?;
        } else if let Err(Capped) = self.send_verification(&mut tx, user_id, email.as_str()).await? {
            // Another spelling of this mailbox was just sent one. The account is made all the
            // same; its unused link expires.
            tracing::info!(%user_id, "verification email held back by the email cap");
        }
        let session =
            sessions::create(&mut tx, user_id, team_id, device, security::Event::AccountCreated).await?;
        tx.commit().await?;
        tracing::info!(%user_id, "account created");
        Ok(Ok(session))
    }

    /// Checks the password and starts a session in the user's first team. Unknown emails cost
    /// the same hash time; failures count towards the email's backoff whether or not it exists.
    /// `client` is the client's rate-limit bucket: the backoff is per account and client, and
    /// failures are logged with it (never with the password).
    /// `next` is where to go once signed in: a 2FA user's half-done login keeps it.
    pub async fn log_in(
        &self,
        email: &EmailAddress,
        password: &str,
        device: Device<'_>,
        client: IpAddr,
        next: Option<&str>,
    ) -> Result<Login> {
        // One query, as without 2FA: whether the user has it comes with the password hash.
        let user = sqlx::query!(
            r#"SELECT u.id, u.password_hash, m.team_id, u.disabled_at IS NOT NULL AS "disabled!",
                      EXISTS (SELECT 1 FROM two_factor t WHERE t.user_id = u.id AND t.enabled_at IS NOT NULL) AS "two_factor!"
             FROM users u
             JOIN memberships m ON m.user_id = u.id
             WHERE lower(u.email) = lower($1)
             ORDER BY (m.role = $2) DESC, m.created_at
             LIMIT 1"#,
            email.as_str(),
            Role::Owner.as_str(),
        )
        .fetch_optional(&self.db)
        .await?;
        // The lookup runs for every address, so the work before the hash is the same whether
        // or not an account exists.
        let user_id = user.as_ref().map(|user| user.id);
        let account = AccountKey::new(email, user_id);
        if let Some(wait) = self.throttle.begin(&account, client).await {
            tracing::warn!(%client, ?user_id, wait_secs = wait.as_secs(), "login refused: too many failures");
            return Ok(Login::Locked(wait));
        }
        let stored = user.as_ref().map(|user| user.password_hash.clone());
        let verified = self.passwords.verify(password, stored).await?;
        let Some(user) = user.filter(|_| verified) else {
            tracing::warn!(%client, ?user_id, "login failed");
            return Ok(Login::Refused);
        };
        self.throttle.succeeded(&account, client).await;
        if user.disabled {
            tracing::warn!(%client, user_id = %user.id, "login refused: the account is disabled");
            return Ok(Login::Disabled);
        }
        if !password::is_current(&user.password_hash) {
            self.upgrade_hash(user.id, &user.password_hash, password).await?;
        }
        let mut conn = self.db.acquire().await?;
        if user.two_factor {
            let pending = two_factor::start_pending_login(&mut conn, user.id, user.team_id, next).await?;
            tracing::info!(user_id = %user.id, "password right; waiting for the second factor");
            return Ok(Login::SecondFactor(pending));
        }
        let session = sessions::create(
            &mut conn,
            user.id,
            user.team_id,
            device,
            security::Event::SignedIn,
        )
        .await?;
        tracing::info!(user_id = %user.id, "signed in");
        Ok(Login::SignedIn(session))
    }

    /// Replaces a hash made with older parameters (the password just verified against it).
    async fn upgrade_hash(&self, user_id: Uuid, old_hash: &str, password: &str) -> Result<()> {
        let new_hash = self.passwords.rehash(password).await?;
        // Compare-and-set: a password changed meanwhile is not overwritten.
        sqlx::query!(
            "UPDATE users SET password_hash = $3, updated_at = now() WHERE id = $1 AND password_hash = $2",
            user_id,
            old_hash,
            new_hash,
        )
        .execute(&self.db)
        .await?;
        tracing::info!(%user_id, "password hash upgraded to the current parameters");
        Ok(())
    }

    /// The live session behind a cookie's token.
    pub async fn session(&self, token: &SecretToken) -> Result<Option<Session>> {
        sessions::load(&self.db, token).await
    }

    pub async fn log_out(&self, token: &SecretToken) -> Result<()> {
        let mut conn = self.db.acquire().await?;
        sessions::delete(&mut conn, token).await
    }

    /// Marks the address the link was sent to as verified, if it is still the user's address.
    pub async fn verify_email(&self, token: Option<&SecretToken>) -> Result<Result<(), LinkProblem>> {
        let mut tx = self.db.begin().await?;
        let owner = match tokens::redeem(&mut tx, Purpose::VerifyEmail, token).await? {
            Ok(owner) => owner,
            Err(problem) => return Ok(Err(problem)),
        };
        sqlx::query!(
            "UPDATE users SET email_verified_at = coalesce(email_verified_at, now()), updated_at = now()
             WHERE id = $1 AND lower(email) = lower($2)",
            owner.user_id,
            owner.email,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(user_id = %owner.user_id, "email verified");
        Ok(Ok(()))
    }

    /// Emails a new verification link, unless the address is verified or the email cap holds
    /// it back (one went to this mailbox recently). Returns whether one was sent.
    pub async fn resend_verification(&self, session: &Session) -> Result<bool> {
        if session.email_verified {
            return Ok(false);
        }
        let mut tx = self.db.begin().await?;
        if let Err(Capped) = self
            .send_verification(&mut tx, session.user_id, &session.email)
            .await?
        {
            return Ok(false); // rolled back: no token either
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Issues a verification link and queues its email, if the email cap lets it go.
    async fn send_verification(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        email: &str,
    ) -> Result<Result<(), Capped>> {
        let token = tokens::issue(conn, Purpose::VerifyEmail, user_id, email).await?;
        let message = VerifyEmail {
            address: email.to_owned(),
            link: self
                .mailer
                .link(&format!("/verify-email?token={}", token.as_str())),
        };
        let key = format!("verify-email:{}", hex::encode(token.digest()));
        let queued =
            mail::enqueue_capped(conn, &self.mailer, email, CapKind::Verification, &key, &message).await?;
        Ok(queued.map(|_| ()))
    }

    /// Queues a reset email for `email` if an account has it. The request does the same work
    /// either way (one job row); the job looks the account up.
    pub async fn request_password_reset(&self, email: &EmailAddress) -> Result<()> {
        let mut conn = self.db.acquire().await?;
        jobs::enqueue(
            &mut conn,
            &SendPasswordReset {
                email: email.as_str().to_owned(),
            },
        )
        .await?;
        Ok(())
    }

    /// Who a reset link belongs to, without using it (to show the form).
    pub async fn reset_link_owner(&self, token: Option<&SecretToken>) -> Result<Result<String, LinkProblem>> {
        Ok(tokens::peek(&self.db, Purpose::ResetPassword, token)
            .await?
            .map(|owner| owner.email))
    }

    /// Sets a new password from a reset link, ends every session of the user and every other
    /// reset link, and tells the owner by email.
    pub async fn reset_password(
        &self,
        token: Option<&SecretToken>,
        password: &NewPassword,
    ) -> Result<Result<(), LinkProblem>> {
        let password_hash = self.passwords.hash(password).await?;
        let mut tx = self.db.begin().await?;
        let owner = match tokens::redeem(&mut tx, Purpose::ResetPassword, token).await? {
            Ok(owner) => owner,
            Err(problem) => return Ok(Err(problem)),
        };
        let event = (security::Event::PasswordReset, None);
        self.replace_password(&mut tx, owner.user_id, &password_hash, None, event)
            .await?;
        tokens::revoke_all(&mut tx, Purpose::ResetPassword, owner.user_id).await?;
        tx.commit().await?;
        tracing::info!(user_id = %owner.user_id, "password reset");
        Ok(Ok(()))
    }

    /// Changes the signed-in user's password; every other session of theirs ends. The check
    /// of the current password is throttled like a login (a stolen session must not make it a
    /// free guessing oracle).
    pub async fn change_password(
        &self,
        session: &Session,
        current_session: &SecretToken,
        current_password: &str,
        new_password: &NewPassword,
        client: IpAddr,
    ) -> Result<Result<(), PasswordRefused>> {
        if let Err(refused) = self
            .check_password(session.user_id, current_password, client)
            .await?
        {
            return Ok(Err(refused));
        }
        let password_hash = self.passwords.hash(new_password).await?;
        let mut tx = self.db.begin().await?;
        let event = (security::Event::PasswordChanged, Some(client));
        self.replace_password(
            &mut tx,
            session.user_id,
            &password_hash,
            Some(current_session),
            event,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(user_id = %session.user_id, "password changed");
        Ok(Ok(()))
    }

    /// Checks the signed-in user's current password, throttled like a login (a stolen session
    /// must not make it a free guessing oracle). `client` is the client's rate-limit bucket.
    async fn check_password(
        &self,
        user_id: Uuid,
        password: &str,
        client: IpAddr,
    ) -> Result<Result<(), PasswordRefused>> {
        let account = AccountKey::user(user_id);
        if let Some(wait) = self.throttle.begin(&account, client).await {
            tracing::warn!(%client, %user_id, wait_secs = wait.as_secs(), "refused: too many wrong current passwords");
            return Ok(Err(PasswordRefused::Locked(wait)));
        }
        // `None` when the account was deleted meanwhile (the same form posted twice): refused.
        let stored = sqlx::query_scalar!("SELECT password_hash FROM users WHERE id = $1", user_id)
            .fetch_optional(&self.db)
            .await?;
        if !self.passwords.verify(password, stored).await? {
            tracing::warn!(%client, %user_id, "wrong current password");
            return Ok(Err(PasswordRefused::WrongPassword));
        }
        self.throttle.succeeded(&account, client).await;
        Ok(Ok(()))
    }

    async fn replace_password(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
        password_hash: &str,
        keep_session: Option<&SecretToken>,
        (event, client): (security::Event, Option<IpAddr>),
    ) -> Result<()> {
        let email = sqlx::query_scalar!(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1 RETURNING email",
            user_id,
            password_hash,
        )
        .fetch_one(&mut *conn)
        .await?;
        let ended = sessions::delete_all_of_user(conn, user_id, keep_session).await?;
        security::record(conn, user_id, event, client).await?;
        tracing::info!(%user_id, ended, "ended the other sessions");
        let notice = PasswordChanged {
            address: email.clone(),
            reset_link: self.mailer.link("/forgot-password"),
        };
        let key = format!("password-changed:{user_id}:{}", Uuid::new_v4());
        mail::enqueue(conn, &self.mailer, &email, &key, &notice).await?;
        Ok(())
    }
}

/// Looks up the account of `email` and, if there is one, emails it a reset link (if the email
/// cap lets it go). Enqueued by every forgot-password request, so the request's timing says
/// nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendPasswordReset {
    pub email: String,
}

impl Job for SendPasswordReset {
    const KIND: &'static str = crate::jobs::JobKind::SendPasswordReset.as_str();
    const MAX_ATTEMPTS: i32 = 5;

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let mut tx = context.db.begin().await?;
        let user = sqlx::query!(
            "SELECT id, email FROM users WHERE lower(email) = lower($1)",
            self.email
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else { return Ok(()) };
        let token = tokens::issue(&mut tx, Purpose::ResetPassword, user.id, &user.email).await?;
        let message = PasswordReset {
            address: user.email.clone(),
            link: context
                .mailer
                .link(&format!("/reset-password?token={}", token.as_str())),
        };
        // Keyed by this job: a rerun after a crash finds its email queued and changes nothing.
        let key = format!("password-reset:{}", context.job_id);
        let queued = mail::enqueue_capped(
            &mut tx,
            &context.mailer,
            &user.email,
            CapKind::PasswordReset,
            &key,
            &message,
        )
        .await?;
        match queued {
            Ok(true) => tx.commit().await?,
            // Not committed, so the new token goes too: an earlier run of this job queued
            // the email, or the cap holds it back.
            Ok(false) => {}
            Err(Capped) => tracing::info!(user_id = %user.id, "reset email held back by the email cap"),
        }
        Ok(())
    }
}

/// Deletes ended sessions and long-expired link tokens (scheduled hourly).
#[derive(Debug, Serialize, Deserialize)]
pub struct PurgeExpiredAuth;

impl Job for PurgeExpiredAuth {
    const KIND: &'static str = crate::jobs::JobKind::PurgeExpiredAuth.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let sessions = sessions::purge_ended(&context.db).await?;
        let tokens = tokens::purge_expired(&context.db, 7).await?;
        let exports = export::purge_expired(&context.db).await?;
        tracing::info!(
            sessions,
            tokens,
            exports,
            "purged ended sessions, expired tokens and exports"
        );
        Ok(())
    }
}

//! Changing a user's email address (SPEC, "Account security and lifecycle"): the new address
//! is confirmed by a link sent to it, and only then becomes the account's; the old address is
//! then told, with a link that restores it for 7 days and ends every session (for an owner
//! whose account was taken over).

use std::net::IpAddr;

use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Accounts, PasswordRefused, SecretToken, Session, security, sessions,
    tokens::{self, LinkProblem, Purpose},
};
use crate::{
    domain::EmailAddress,
    error::Result,
    mail::{self, CapKind, Capped, ConfirmNewEmail, EmailChanged},
};

/// Why a change of address was not started or not made.
#[derive(Debug)]
pub enum EmailChangeRefused {
    Password(PasswordRefused),
    /// It is the account's address already.
    Unchanged,
    /// Another account has this address (at the request, or by the time of the confirmation).
    Taken,
    /// A confirmation email went to this address moments ago (the email cap).
    Capped,
    Link(LinkProblem),
}

impl From<PasswordRefused> for EmailChangeRefused {
    fn from(refused: PasswordRefused) -> Self {
        Self::Password(refused)
    }
}

impl Accounts {
    /// Checks the password and emails a confirmation link to `new`. `client` is the client's
    /// rate-limit bucket (the password check is throttled like a login).
    pub async fn request_email_change(
        &self,
        session: &Session,
        password: &str,
        new: &EmailAddress,
        client: IpAddr,
    ) -> Result<Result<(), EmailChangeRefused>> {
        if new.as_str().eq_ignore_ascii_case(&session.email) {
            return Ok(Err(EmailChangeRefused::Unchanged));
        }
        if let Err(refused) = self.check_password(session.user_id, password, client).await? {
            return Ok(Err(refused.into()));
        }
        let mut tx = self.db.begin().await?;
        if taken(&mut tx, session.user_id, new.as_str()).await? {
            return Ok(Err(EmailChangeRefused::Taken));
        }
        let token = tokens::issue(&mut tx, Purpose::ChangeEmail, session.user_id, new.as_str()).await?;
        let message = ConfirmNewEmail {
            address: new.as_str().to_owned(),
            link: self
                .mailer
                .link(&format!("/confirm-email?token={}", token.as_str())),
        };
        let key = format!("confirm-email:{}", hex::encode(token.digest()));
        let queued = mail::enqueue_capped(
            &mut tx,
            &self.mailer,
            new.as_str(),
            CapKind::EmailChange,
            &key,
            &message,
        )
        .await?;
        if let Err(Capped) = queued {
            return Ok(Err(EmailChangeRefused::Capped)); // rolled back: no token either
        }
        tx.commit().await?;
        tracing::info!(user_id = %session.user_id, "email change requested");
        Ok(Ok(()))
    }

    /// Follows a confirmation link: the address it was sent to becomes the account's (and is
    /// verified), unless another account took it meanwhile; the old address gets a revert
    /// link. Returns the new address.
    pub async fn confirm_email_change(
        &self,
        token: Option<&SecretToken>,
    ) -> Result<Result<String, EmailChangeRefused>> {
        let mut tx = self.db.begin().await?;
        let owner = match tokens::redeem(&mut tx, Purpose::ChangeEmail, token).await? {
            Ok(owner) => owner,
            Err(problem) => return Ok(Err(EmailChangeRefused::Link(problem))),
        };
        let old = sqlx::query_scalar!("SELECT email FROM users WHERE id = $1 FOR UPDATE", owner.user_id)
            .fetch_one(&mut *tx)
            .await?;
        if !set_address(&mut tx, owner.user_id, &owner.email).await? {
            return Ok(Err(EmailChangeRefused::Taken));
        }
        let revert = tokens::issue(&mut tx, Purpose::RevertEmail, owner.user_id, &old).await?;
        let notice = EmailChanged {
            old_address: old.clone(),
            new_address: owner.email.clone(),
            revert_link: self
                .mailer
                .link(&format!("/revert-email?token={}", revert.as_str())),
        };
        // Not capped: caused by the owner of the address, once per change.
        let key = format!("email-changed:{}", hex::encode(revert.digest()));
        mail::enqueue(&mut tx, &self.mailer, &old, &key, &notice).await?;
        security::record(&mut tx, owner.user_id, security::Event::EmailChanged, None).await?;
        tx.commit().await?;
        tracing::info!(user_id = %owner.user_id, "email changed");
        Ok(Ok(owner.email))
    }

    /// Follows a revert link: the old address is the account's again, every session ends, and
    /// every pending change is cancelled. Returns the restored address.
    pub async fn revert_email_change(
        &self,
        token: Option<&SecretToken>,
    ) -> Result<Result<String, EmailChangeRefused>> {
        let mut tx = self.db.begin().await?;
        let owner = match tokens::redeem(&mut tx, Purpose::RevertEmail, token).await? {
            Ok(owner) => owner,
            Err(problem) => return Ok(Err(EmailChangeRefused::Link(problem))),
        };
        if !set_address(&mut tx, owner.user_id, &owner.email).await? {
            return Ok(Err(EmailChangeRefused::Taken));
        }
        tokens::revoke_all(&mut tx, Purpose::ChangeEmail, owner.user_id).await?;
        let ended = sessions::delete_all_of_user(&mut tx, owner.user_id, None).await?;
        security::record(&mut tx, owner.user_id, security::Event::EmailReverted, None).await?;
        tx.commit().await?;
        tracing::warn!(user_id = %owner.user_id, ended, "email change reverted; every session ended");
        Ok(Ok(owner.email))
    }
}

/// Whether an account other than `user_id` has `email` (in any case).
async fn taken(conn: &mut PgConnection, user_id: Uuid, email: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1) AND id <> $2) AS "taken!""#,
        email,
        user_id,
    )
    .fetch_one(conn)
    .await?)
}

/// Makes `email` the address of `user_id`, verified (a link sent to it was followed);
/// `false` when another account has it (the unique index decides, so two accounts confirming
/// one address at once cannot both have it).
async fn set_address(conn: &mut PgConnection, user_id: Uuid, email: &str) -> Result<bool> {
    let updated = sqlx::query!(
        "UPDATE users SET email = $2, email_verified_at = now(), updated_at = now() WHERE id = $1",
        user_id,
        email,
    )
    .execute(conn)
    .await;
    match updated {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

//! Single-use, expiring tokens for emailed links: verify an address, reset a password, confirm
//! a new address, restore the old one.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::SecretToken;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
    /// Sent to a new address: following it makes it the account's address.
    ChangeEmail,
    /// Sent to the old address after a change: following it restores it.
    RevertEmail,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::ResetPassword => "reset_password",
            Purpose::ChangeEmail => "change_email",
            Purpose::RevertEmail => "revert_email",
        }
    }

    /// How long a link stays valid.
    pub fn lifetime(self) -> Duration {
        match self {
            Purpose::VerifyEmail => Duration::from_secs(24 * 3600),
            Purpose::ResetPassword => Duration::from_secs(3600),
            Purpose::ChangeEmail => Duration::from_secs(24 * 3600),
            Purpose::RevertEmail => Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why a link no longer works; the page says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProblem {
    /// Never issued (or long purged), or mangled on the way.
    Invalid,
    Used,
    Expired,
}

/// Whose link it is and which address it was sent to.
#[derive(Clone, Debug)]
pub struct LinkOwner {
    pub user_id: Uuid,
    pub email: String,
}

/// Creates a token for `user_id`, to be emailed to `email`.
pub async fn issue(
    conn: &mut PgConnection,
    purpose: Purpose,
    user_id: Uuid,
    email: &str,
) -> Result<SecretToken> {
    let token = SecretToken::generate();
    sqlx::query!(
        "INSERT INTO auth_tokens (token_hash, purpose, user_id, email, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        token.digest(),
        purpose.as_str(),
        user_id,
        email,
        purpose.lifetime().as_secs_f64(),
    )
    .execute(conn)
    .await?;
    Ok(token)
}

/// Who the token belongs to, without using it up (to show the reset form).
pub async fn peek(
    db: &PgPool,
    purpose: Purpose,
    token: Option<&SecretToken>,
) -> Result<Result<LinkOwner, LinkProblem>> {
    let Some(token) = token else {
        return Ok(Err(LinkProblem::Invalid));
    };
    let row = sqlx::query!(
        r#"SELECT user_id, email, used_at IS NOT NULL AS "used!", expires_at <= now() AS "expired!"
           FROM auth_tokens WHERE token_hash = $1 AND purpose = $2"#,
        token.digest(),
        purpose.as_str(),
    )
    .fetch_optional(db)
    .await?;
    Ok(match row {
        None => Err(LinkProblem::Invalid),
        Some(row) if row.used => Err(LinkProblem::Used),
        Some(row) if row.expired => Err(LinkProblem::Expired),
        Some(row) => Ok(LinkOwner {
            user_id: row.user_id,
            email: row.email,
        }),
    })
}

/// Uses the token up, once: of two concurrent redemptions exactly one succeeds.
pub async fn redeem(
    conn: &mut PgConnection,
    purpose: Purpose,
    token: Option<&SecretToken>,
) -> Result<Result<LinkOwner, LinkProblem>> {
    let Some(token) = token else {
        return Ok(Err(LinkProblem::Invalid));
    };
    let redeemed = sqlx::query!(
        "UPDATE auth_tokens SET used_at = now()
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id, email",
        token.digest(),
        purpose.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = redeemed {
        return Ok(Ok(LinkOwner {
            user_id: row.user_id,
            email: row.email,
        }));
    }
    // Say why: look at the row as it is now.
    let row = sqlx::query!(
        r#"SELECT used_at IS NOT NULL AS "used!" FROM auth_tokens WHERE token_hash = $1 AND purpose = $2"#,
        token.digest(),
        purpose.as_str(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(Err(match row {
        None => LinkProblem::Invalid,
        Some(row) if row.used => LinkProblem::Used,
        Some(_) => LinkProblem::Expired,
    }))
}

/// Marks every open token of this purpose for `user_id` used (a reset ends the other links).
pub async fn revoke_all(conn: &mut PgConnection, purpose: Purpose, user_id: Uuid) -> Result<()> {
    sqlx::query!(
        "UPDATE auth_tokens SET used_at = now() WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        user_id,
        purpose.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes tokens expired more than `keep_days` ago (kept that long so a late click is told
/// "expired", not "invalid").
pub async fn purge_expired(db: &PgPool, keep_days: u32) -> Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM auth_tokens WHERE expires_at < now() - make_interval(days => $1)",
        i32::try_from(keep_days).unwrap_or(i32::MAX),
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

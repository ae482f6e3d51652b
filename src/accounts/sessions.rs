//! Server-side sessions in PostgreSQL.
//!
//! The browser holds a random token in a cookie; the `sessions` row (keyed by the token's
//! SHA-256) holds who is signed in and in which team. Loading a session is one indexed query
//! that also returns the user and team, so an authenticated page costs one round trip.
//! A session ends when it is deleted (logout, password change), after `IDLE_TIMEOUT` without
//! a request, or `ABSOLUTE_TIMEOUT` after login, whichever comes first.

use std::{net::IpAddr, time::Duration};

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SecretToken, security};
use crate::{
    billing::entitlement::Subscription,
    domain::{Role, SubscriptionStatus},
    error::Result,
};

/// A session not used for this long has ended.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// No session lives longer than this, however active.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// `last_seen_at` is written at most this often, so browsing does not write on every request.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A live session with the user and team it belongs to.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub team_id: Uuid,
    pub team_name: String,
    pub role: Role,
    /// The team asks its members to sign in with a second factor.
    pub team_requires_2fa: bool,
    /// The user signs in with a second factor.
    pub two_factor: bool,
    /// The user may open the operator console (`keel admin grant`).
    pub operator: bool,
    /// An operator viewing the product as this user (impersonation), not the user.
    pub impersonator: Option<Impersonator>,
    /// The team's subscription as keel last learned it (for entitlement and the banners).
    pub subscription: Option<Subscription>,
}

/// The operator behind an impersonation session.
#[derive(Clone, Debug)]
pub struct Impersonator {
    pub user_id: Uuid,
    pub email: String,
}

/// How long an impersonation session lasts, however active.
pub const IMPERSONATION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The browser a session starts in: what `/settings/sessions` shows of it.
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    pub user_agent: Option<&'a str>,
    pub client: IpAddr,
}

/// Starts a session for `user_id` working in `team_id` on `device`, and records `event` (the
/// sign-in) in the user's security log in the same statement; the token goes into the cookie.
pub async fn create(
    conn: &mut PgConnection,
    user_id: Uuid,
    team_id: Uuid,
    device: Device<'_>,
    event: security::Event,
) -> Result<SecretToken> {
    let token = SecretToken::generate();
    let user_agent = device
        .user_agent
        .map(|ua| ua.chars().take(256).collect::<String>());
    sqlx::query!(
        "WITH session AS (
             INSERT INTO sessions (id_hash, user_id, team_id, expires_at, user_agent, client_ip)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6::text::inet)
             RETURNING user_id, client_ip
         )
         INSERT INTO security_log (user_id, event, client_ip) SELECT user_id, $7, client_ip FROM session",
        token.digest(),
        user_id,
        team_id,
        ABSOLUTE_TIMEOUT.as_secs_f64(),
        user_agent,
        device.client.to_string(),
        event.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(token)
}

/// Starts an impersonation: a session of `user_id`'s in `team_id`, marked with the operator
/// `impersonator`, for [`IMPERSONATION_TIMEOUT`]. Without the operator's address: the user
/// sees their sessions (the operator audit log has it).
pub async fn create_impersonation(
    conn: &mut PgConnection,
    user_id: Uuid,
    team_id: Uuid,
    impersonator: Uuid,
) -> Result<SecretToken> {
    let token = SecretToken::generate();
    sqlx::query!(
        "INSERT INTO sessions (id_hash, user_id, team_id, expires_at, impersonator_id)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)",
        token.digest(),
        user_id,
        team_id,
        IMPERSONATION_TIMEOUT.as_secs_f64(),
        impersonator,
    )
    .execute(conn)
    .await?;
    Ok(token)
}

/// The live session behind `token`, if any; refreshes its idle clock now and then.
pub async fn load(db: &PgPool, token: &SecretToken) -> Result<Option<Session>> {
    let id_hash = token.digest();
    let row = sqlx::query!(
        r#"SELECT s.user_id, s.team_id, s.last_seen_at, u.email,
                  u.email_verified_at IS NOT NULL AS "email_verified!", t.name AS team_name, m.role AS "role: Role",
                  t.require_2fa AS team_requires_2fa, u.is_operator,
                  EXISTS (SELECT 1 FROM two_factor tf WHERE tf.user_id = s.user_id AND tf.enabled_at IS NOT NULL)
                      AS "two_factor!",
                  sub.status AS "sub_status?: SubscriptionStatus", sub.price_id AS "sub_price_id?",
                  sub.current_period_end AS "sub_period_end?",
                  sub.cancel_at_period_end AS "sub_cancel_at_period_end?",
                  sub.payment_failed_at AS "sub_payment_failed_at?",
                  sub.state_as_of AS "sub_state_as_of?",
                  s.impersonator_id, op.email AS "impersonator_email?"
           FROM sessions s
           JOIN users u ON u.id = s.user_id
           JOIN memberships m ON m.user_id = s.user_id AND m.team_id = s.team_id
           JOIN teams t ON t.id = s.team_id
           LEFT JOIN users op ON op.id = s.impersonator_id
           -- The team's subscription: one that can be entitled before any other, then the newest.
           LEFT JOIN LATERAL (
               SELECT status, price_id, current_period_end, cancel_at_period_end, payment_failed_at,
                      state_as_of
               FROM subscriptions
               WHERE team_id = s.team_id
               ORDER BY status = ANY($3) DESC, state_as_of DESC
               LIMIT 1
           ) sub ON true
           WHERE s.id_hash = $1
             AND u.disabled_at IS NULL
             AND s.expires_at > now()
             AND s.last_seen_at > now() - make_interval(secs => $2)"#,
        id_hash,
        IDLE_TIMEOUT.as_secs_f64(),
        SubscriptionStatus::entitling_sql(),
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if OffsetDateTime::now_utc() - row.last_seen_at > TOUCH_EVERY {
        sqlx::query!(
            "UPDATE sessions SET last_seen_at = now() WHERE id_hash = $1",
            id_hash
        )
        .execute(db)
        .await?;
    }
    Ok(Some(Session {
        user_id: row.user_id,
        email: row.email,
        email_verified: row.email_verified,
        team_id: row.team_id,
        team_name: row.team_name,
        role: row.role,
        team_requires_2fa: row.team_requires_2fa,
        two_factor: row.two_factor,
        operator: row.is_operator,
        impersonator: row
            .impersonator_id
            .zip(row.impersonator_email)
            .map(|(user_id, email)| Impersonator { user_id, email }),
        subscription: row.sub_status.map(|status| Subscription {
            status,
            price_id: row.sub_price_id,
            current_period_end: row.sub_period_end,
            cancel_at_period_end: row.sub_cancel_at_period_end.unwrap_or(false),
            payment_failed_at: row.sub_payment_failed_at,
            state_as_of: row.sub_state_as_of.unwrap_or_else(OffsetDateTime::now_utc),
        }),
    }))
}

/// Ends the session behind `token` (logout).
pub async fn delete(conn: &mut PgConnection, token: &SecretToken) -> Result<()> {
    sqlx::query!("DELETE FROM sessions WHERE id_hash = $1", token.digest())
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends every session of `user_id` except `keep` (after a password change or reset).
pub async fn delete_all_of_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    keep: Option<&SecretToken>,
) -> Result<u64> {
    let keep = keep.map(SecretToken::digest);
    let deleted = sqlx::query!(
        "DELETE FROM sessions WHERE user_id = $1 AND id_hash IS DISTINCT FROM $2",
        user_id,
        keep,
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Removes sessions that have ended (run by the scheduler).
pub async fn purge_ended(db: &PgPool) -> Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM sessions
         WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1)",
        IDLE_TIMEOUT.as_secs_f64(),
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

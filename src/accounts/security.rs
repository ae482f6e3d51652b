//! What a user sees of their account's security on `/settings/sessions` (SPEC, "Account
//! security and lifecycle"): their live sessions, which they can end, and their security log.
//!
//! A session records its browser and client address when it starts (`sessions::create`, in
//! the same statement as its log entry), so requests pay nothing for this page.

use std::{fmt, net::IpAddr, str::FromStr};

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SecretToken, sessions};
use crate::error::Result;

/// What happened to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    AccountCreated,
    SignedIn,
    PasswordChanged,
    PasswordReset,
    SessionRevoked,
    OtherSessionsRevoked,
    EmailChanged,
    EmailReverted,
    TwoFactorEnabled,
    TwoFactorDisabled,
    TwoFactorFailed,
    DataExported,
    DisabledByOperator,
    EnabledByOperator,
    SessionsEndedByOperator,
    ImpersonationStarted,
    ImpersonationStopped,
}

impl Event {
    const ALL: [Self; 17] = [
        Self::AccountCreated,
        Self::SignedIn,
        Self::PasswordChanged,
        Self::PasswordReset,
        Self::SessionRevoked,
        Self::OtherSessionsRevoked,
        Self::EmailChanged,
        Self::EmailReverted,
        Self::TwoFactorEnabled,
        Self::TwoFactorDisabled,
        Self::TwoFactorFailed,
        Self::DataExported,
        Self::DisabledByOperator,
        Self::EnabledByOperator,
        Self::SessionsEndedByOperator,
        Self::ImpersonationStarted,
        Self::ImpersonationStopped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AccountCreated => "account_created",
            Self::SignedIn => "signed_in",
            Self::PasswordChanged => "password_changed",
            Self::PasswordReset => "password_reset",
            Self::SessionRevoked => "session_revoked",
            Self::OtherSessionsRevoked => "other_sessions_revoked",
            Self::EmailChanged => "email_changed",
            Self::EmailReverted => "email_reverted",
            Self::TwoFactorEnabled => "two_factor_enabled",
            Self::TwoFactorDisabled => "two_factor_disabled",
            Self::TwoFactorFailed => "two_factor_failed",
            Self::DataExported => "data_exported",
            Self::DisabledByOperator => "disabled_by_operator",
            Self::EnabledByOperator => "enabled_by_operator",
            Self::SessionsEndedByOperator => "sessions_ended_by_operator",
            Self::ImpersonationStarted => "impersonation_started",
            Self::ImpersonationStopped => "impersonation_stopped",
        }
    }

    /// How the page says it.
    pub const fn in_words(self) -> &'static str {
        match self {
            Self::AccountCreated => "Account created",
            Self::SignedIn => "Signed in",
            Self::PasswordChanged => "Password changed",
            Self::PasswordReset => "Password reset by email",
            Self::SessionRevoked => "A session was signed out",
            Self::OtherSessionsRevoked => "Every other session was signed out",
            Self::EmailChanged => "Email address changed",
            Self::EmailReverted => "Email address restored; every session signed out",
            Self::TwoFactorEnabled => "Two-factor sign-in turned on",
            Self::TwoFactorDisabled => "Two-factor sign-in turned off",
            Self::TwoFactorFailed => "A wrong two-factor code",
            Self::DataExported => "A data export was requested",
            Self::DisabledByOperator => "Account disabled by support; every session signed out",
            Self::EnabledByOperator => "Account enabled again by support",
            Self::SessionsEndedByOperator => "Every session signed out by support",
            Self::ImpersonationStarted => "Support started viewing your account as you",
            Self::ImpersonationStopped => "Support stopped viewing your account as you",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a security event")]
pub struct UnknownEvent;

impl FromStr for Event {
    type Err = UnknownEvent;

    fn from_str(raw: &str) -> Result<Self, UnknownEvent> {
        Self::ALL
            .into_iter()
            .find(|event| event.as_str() == raw)
            .ok_or(UnknownEvent)
    }
}

crate::domain::text_column!(Event);

/// Appends `event` to `user_id`'s security log, on `conn`.
pub async fn record(
    conn: &mut PgConnection,
    user_id: Uuid,
    event: Event,
    client: Option<IpAddr>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO security_log (user_id, event, client_ip) VALUES ($1, $2, $3::text::inet)",
        user_id,
        event.as_str(),
        client.map(|client| client.to_string()),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// An entry of the log as the page shows it.
pub struct Entry {
    pub at: OffsetDateTime,
    pub event: Event,
    pub client_ip: Option<String>,
}

/// The newest `limit` entries of `user_id`'s log, newest first.
pub async fn recent(db: &PgPool, user_id: Uuid, limit: i64) -> Result<Vec<Entry>> {
    Ok(sqlx::query_as!(
        Entry,
        r#"SELECT at, event AS "event: Event", host(client_ip) AS client_ip
           FROM security_log WHERE user_id = $1 ORDER BY id DESC LIMIT $2"#,
        user_id,
        limit,
    )
    .fetch_all(db)
    .await?)
}

/// A live session as the page shows it.
pub struct SessionRow {
    pub id: Uuid,
    pub started: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub browser: String,
    pub client_ip: Option<String>,
    /// The session of the request showing the page.
    pub current: bool,
}

/// `user_id`'s live sessions, the most recently used first.
pub async fn sessions_of(db: &PgPool, user_id: Uuid, current: &SecretToken) -> Result<Vec<SessionRow>> {
    let rows = sqlx::query!(
        r#"SELECT public_id, created_at, last_seen_at, user_agent, host(client_ip) AS client_ip,
                  id_hash = $2 AS "current!", impersonator_id IS NOT NULL AS "support!"
           FROM sessions
           WHERE user_id = $1 AND expires_at > now() AND last_seen_at > now() - make_interval(secs => $3)
           ORDER BY id_hash = $2 DESC, last_seen_at DESC"#,
        user_id,
        current.digest(),
        sessions::IDLE_TIMEOUT.as_secs_f64(),
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| SessionRow {
            id: row.public_id,
            started: row.created_at,
            last_seen: row.last_seen_at,
            // An operator viewing the product as the user (the operator console).
            browser: if row.support {
                "Support, through the operator console".to_owned()
            } else {
                browser_in_words(row.user_agent.as_deref())
            },
            client_ip: row.client_ip,
            current: row.current,
        })
        .collect())
}

/// Ends `user_id`'s session `id`. `None`: they have no such session; else whether it was the
/// current one (`current`).
pub async fn revoke(
    db: &PgPool,
    user_id: Uuid,
    id: Uuid,
    current: &SecretToken,
    client: IpAddr,
) -> Result<Option<bool>> {
    let mut tx = db.begin().await?;
    let ended = sqlx::query_scalar!(
        r#"DELETE FROM sessions WHERE user_id = $1 AND public_id = $2 RETURNING id_hash = $3 AS "current!""#,
        user_id,
        id,
        current.digest(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if ended.is_some() {
        record(&mut tx, user_id, Event::SessionRevoked, Some(client)).await?;
    }
    tx.commit().await?;
    Ok(ended)
}

/// Ends every session of `user_id` but `current`; how many.
pub async fn revoke_others(db: &PgPool, user_id: Uuid, current: &SecretToken, client: IpAddr) -> Result<u64> {
    let mut tx = db.begin().await?;
    let ended = sessions::delete_all_of_user(&mut tx, user_id, Some(current)).await?;
    record(&mut tx, user_id, Event::OtherSessionsRevoked, Some(client)).await?;
    tx.commit().await?;
    Ok(ended)
}

/// "Firefox on Linux", "Safari on iPhone", or "Unknown browser": enough for a person to
/// recognise their device. (A User-Agent parser crate carries megabytes of patterns for a
/// label this page shows once.)
pub fn browser_in_words(user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or_default();
    // Order matters: Edge and Opera also say Chrome; Chrome also says Safari.
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .into_iter()
    .find(|(mark, _)| ua.contains(mark))
    .map(|(_, name)| name);
    let system = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(mark, _)| ua.contains(mark))
    .map(|(_, name)| name);
    match (browser, system) {
        (Some(browser), Some(system)) => format!("{browser} on {system}"),
        (Some(name), None) | (None, Some(name)) => name.to_owned(),
        (None, None) => "Unknown browser".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_named_as_people_know_them() {
        for (ua, words) in [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari on iPhone",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome on macOS",
            ),
            ("curl/8.11.0", "curl"),
            ("", "Unknown browser"),
        ] {
            assert_eq!(browser_in_words(Some(ua)), words, "{ua}");
        }
        assert_eq!(browser_in_words(None), "Unknown browser");
    }

    #[test]
    fn events_round_trip() {
        for event in Event::ALL {
            assert_eq!(event.as_str().parse::<Event>().unwrap(), event);
        }
    }
}

//! The team audit log (SPEC: "The audit log … records who did what, when, from which client
//! address"). Rows are appended in the transaction of the change they record, so a change
//! and its record exist together or not at all; the table refuses updates.

use std::{fmt, net::IpAddr, str::FromStr};

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    InvitationSent,
    InvitationResent,
    InvitationRevoked,
    InvitationAccepted,
    RoleChanged,
    MemberRemoved,
    MemberLeft,
    CheckoutStarted,
    PortalOpened,
    SubscriptionStatusChanged,
    SecurityChanged,
    ImpersonationStarted,
    ImpersonationStopped,
}

impl Action {
    const ALL: [Self; 13] = [
        Self::InvitationSent,
        Self::InvitationResent,
        Self::InvitationRevoked,
        Self::InvitationAccepted,
        Self::RoleChanged,
        Self::MemberRemoved,
        Self::MemberLeft,
        Self::CheckoutStarted,
        Self::PortalOpened,
        Self::SubscriptionStatusChanged,
        Self::SecurityChanged,
        Self::ImpersonationStarted,
        Self::ImpersonationStopped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvitationSent => "invitation.sent",
            Self::InvitationResent => "invitation.resent",
            Self::InvitationRevoked => "invitation.revoked",
            Self::InvitationAccepted => "invitation.accepted",
            Self::RoleChanged => "member.role_changed",
            Self::MemberRemoved => "member.removed",
            Self::MemberLeft => "member.left",
            Self::CheckoutStarted => "billing.checkout_started",
            Self::PortalOpened => "billing.portal_opened",
            Self::SubscriptionStatusChanged => "subscription.status_changed",
            Self::SecurityChanged => "team.security_changed",
            Self::ImpersonationStarted => "support.impersonation_started",
            Self::ImpersonationStopped => "support.impersonation_stopped",
        }
    }

    /// How the activity page says it.
    pub const fn in_words(self) -> &'static str {
        match self {
            Self::InvitationSent => "invited",
            Self::InvitationResent => "resent the invitation of",
            Self::InvitationRevoked => "revoked the invitation of",
            Self::InvitationAccepted => "accepted the invitation of",
            Self::RoleChanged => "changed the role of",
            Self::MemberRemoved => "removed",
            Self::MemberLeft => "left the team",
            Self::CheckoutStarted => "started a checkout for",
            Self::PortalOpened => "opened the billing portal",
            Self::SubscriptionStatusChanged => "reported a new status for subscription",
            Self::SecurityChanged => "changed the team's security settings",
            Self::ImpersonationStarted => "(support) started viewing the product as",
            Self::ImpersonationStopped => "(support) stopped viewing the product as",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not an audit action")]
pub struct UnknownAction;

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(raw: &str) -> Result<Self, UnknownAction> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == raw)
            .ok_or(UnknownAction)
    }
}

crate::domain::text_column!(Action);

/// Who did it: a signed-in user from a client address. Stripe's changes have none.
#[derive(Clone, Copy, Debug)]
pub struct Actor<'a> {
    pub user_id: Uuid,
    pub email: &'a str,
    pub client: IpAddr,
}

/// One thing that happened, as [`record`] writes it.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub action: Action,
    /// What it was done to: an address, a subscription's id.
    pub subject: Option<&'a str>,
    /// The details: `member → admin`, `past_due → active`.
    pub detail: Option<&'a str>,
}

impl<'a> Event<'a> {
    pub const fn new(action: Action) -> Self {
        Self {
            action,
            subject: None,
            detail: None,
        }
    }

    pub const fn on(mut self, subject: &'a str) -> Self {
        self.subject = Some(subject);
        self
    }

    pub const fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// Appends `event` to `team_id`'s log, on `conn` (inside the caller's transaction).
pub async fn record(
    conn: &mut PgConnection,
    team_id: Uuid,
    actor: Option<Actor<'_>>,
    event: Event<'_>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO team_audit_log (team_id, actor_id, actor_email, client_ip, action, subject, detail)
         VALUES ($1, $2, $3, $4::text::inet, $5, $6, $7)",
        team_id,
        actor.map(|actor| actor.user_id),
        actor.map(|actor| actor.email),
        actor.map(|actor| actor.client.to_string()),
        event.action.as_str(),
        event.subject,
        event.detail,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of the log as the activity page shows it.
pub struct Entry {
    pub id: i64,
    pub at: OffsetDateTime,
    /// `None`: Stripe or keel itself.
    pub actor_email: Option<String>,
    pub client_ip: Option<String>,
    pub action: Action,
    pub subject: Option<String>,
    pub detail: Option<String>,
}

/// Up to `limit` entries of `team_id`'s log older than the entry `before` (all when `None`),
/// newest first.
pub async fn page(db: &PgPool, team_id: Uuid, before: Option<i64>, limit: i64) -> Result<Vec<Entry>> {
    Ok(sqlx::query_as!(
        Entry,
        r#"SELECT id, at, actor_email, host(client_ip) AS client_ip, action AS "action: Action", subject, detail
           FROM team_audit_log
           WHERE team_id = $1 AND id < coalesce($2, 9223372036854775807)
           ORDER BY id DESC
           LIMIT $3"#,
        team_id,
        before,
        limit,
    )
    .fetch_all(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>().unwrap(), action);
        }
        assert!("member.deleted".parse::<Action>().is_err());
    }
}

//! Team invitations (SPEC, "Teams (B2B)"): an owner or admin invites an address with a role;
//! the address gets a link, single-use and expiring; whoever is signed in with that address
//! accepts it and joins. Resending or inviting again gives the invitation a new link and ends
//! the old one, which is then told apart from a link that never existed.
//!
//! Each change takes the team's lock (`teams::lock`) first, like every change to its members,
//! and is recorded in the team's audit log in the same transaction.

use hex::encode as hex_encode;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Accounts, SecretToken,
    audit::{self, Action, Actor, Event},
    teams::{self, Refused},
};
use crate::{
    billing::seats,
    domain::{EmailAddress, Role},
    error::Result,
    mail::{self, CapKind, Capped, TeamInvitation},
};

/// A pending invitation, as `/team` lists it.
pub struct Pending {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub invited_by: Option<String>,
    pub sent_at: OffsetDateTime,
    pub expired: bool,
}

/// The invitation behind a link, as `/invite` shows it.
#[derive(Clone, Debug)]
pub struct Invitation {
    pub team_id: Uuid,
    pub team_name: String,
    pub email: String,
    pub role: Role,
    pub invited_by: Option<String>,
}

/// Why a link does not lead to an invitation one can accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProblem {
    /// Never issued, or mangled on the way: 404.
    Unknown,
    /// A newer link was sent for the invitation (resent, or the address invited again): 410.
    Replaced,
    Accepted,
    Revoked,
    Expired,
}

/// Why an invitation was not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum InviteRefused {
    Team(Refused),
    /// The address is already a member of the team.
    AlreadyMember,
    /// The email cap holds it back: one went to this mailbox moments ago.
    Capped,
}

/// Why an invitation was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptRefused {
    Link(LinkProblem),
    /// Signed in with another address than the invited one (which is given).
    OtherAddress(String),
}

/// Who sends an invitation, and from which team.
#[derive(Clone, Copy, Debug)]
pub struct Inviter<'a> {
    pub actor: Actor<'a>,
    pub team_id: Uuid,
    pub team_name: &'a str,
}

/// The invitations of `team_id` not yet accepted or revoked, newest first.
pub async fn pending(db: &PgPool, team_id: Uuid) -> Result<Vec<Pending>> {
    Ok(sqlx::query_as!(
        Pending,
        r#"SELECT i.id, i.email, i.role AS "role: Role", u.email AS "invited_by?", i.sent_at,
                  i.expires_at <= now() AS "expired!"
           FROM invitations i LEFT JOIN users u ON u.id = i.invited_by
           WHERE i.team_id = $1 AND i.accepted_at IS NULL AND i.revoked_at IS NULL
           ORDER BY i.sent_at DESC, i.id"#,
        team_id,
    )
    .fetch_all(db)
    .await?)
}

/// The invitation behind `token`, or why there is none to accept.
pub async fn find(db: &PgPool, token: &SecretToken) -> Result<Result<Invitation, LinkProblem>> {
    let mut conn = db.acquire().await?;
    find_on(&mut conn, token).await
}

/// [`find`] on `conn`, locking the invitation's row until `conn`'s transaction ends (to accept
/// it; outside a transaction, only for the statement).
async fn find_on(conn: &mut PgConnection, token: &SecretToken) -> Result<Result<Invitation, LinkProblem>> {
    let digest = token.digest();
    let row = sqlx::query!(
        r#"SELECT i.team_id, t.name AS team_name, i.email, i.role AS "role: Role", u.email AS "invited_by?",
                  i.accepted_at IS NOT NULL AS "accepted!", i.revoked_at IS NOT NULL AS "revoked!",
                  i.expires_at <= now() AS "expired!"
           FROM invitations i JOIN teams t ON t.id = i.team_id LEFT JOIN users u ON u.id = i.invited_by
           WHERE i.token_hash = $1
           FOR UPDATE OF i"#,
        digest,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| {
        (
            r.team_id,
            r.team_name,
            r.email,
            r.role,
            r.invited_by,
            r.accepted,
            r.revoked,
            r.expired,
        )
    });
    let Some((team_id, team_name, email, role, invited_by, accepted, revoked, expired)) = row else {
        let replaced = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM invitation_old_links WHERE token_hash = $1) AS "replaced!""#,
            digest,
        )
        .fetch_one(conn)
        .await?;
        return Ok(Err(if replaced {
            LinkProblem::Replaced
        } else {
            LinkProblem::Unknown
        }));
    };
    Ok(if accepted {
        Err(LinkProblem::Accepted)
    } else if revoked {
        Err(LinkProblem::Revoked)
    } else if expired {
        Err(LinkProblem::Expired)
    } else {
        Ok(Invitation {
            team_id,
            team_name,
            email,
            role,
            invited_by,
        })
    })
}

/// Whether `token` is a live invitation for `email`: signing up through it proves the address.
pub(super) async fn vouches_for(conn: &mut PgConnection, token: &SecretToken, email: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM invitations
               WHERE token_hash = $1 AND lower(email) = lower($2)
                 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()
           ) AS "vouches!""#,
        token.digest(),
        email,
    )
    .fetch_one(conn)
    .await?)
}

impl Accounts {
    /// Invites `email` to the inviter's team as `role`, replacing a pending invitation of the
    /// address (its old link stops working), and emails the link.
    pub async fn invite(
        &self,
        inviter: Inviter<'_>,
        email: &EmailAddress,
        role: Role,
    ) -> Result<Result<(), InviteRefused>> {
        let Inviter { actor, team_id, .. } = inviter;
        let mut tx = self.db.begin().await?;
        let allowed = teams::lock(&mut tx, team_id, actor.user_id)
            .await?
            .is_some_and(|theirs| theirs.may_invite(role));
        if !allowed {
            return Ok(Err(InviteRefused::Team(Refused::NotAllowed)));
        }
        let member = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
                              WHERE m.team_id = $1 AND lower(u.email) = lower($2)) AS "member!""#,
            team_id,
            email.as_str(),
        )
        .fetch_one(&mut *tx)
        .await?;
        if member {
            return Ok(Err(InviteRefused::AlreadyMember));
        }
        let token = SecretToken::generate();
        self.new_link(
            &mut tx,
            team_id,
            PendingBy::Email(email.as_str()),
            &token,
            actor,
            Some(role),
        )
        .await?;
        if let Err(Capped) = self
            .send_invitation(&mut tx, inviter, email.as_str(), role, &token)
            .await?
        {
            return Ok(Err(InviteRefused::Capped)); // rolled back: nothing changed
        }
        let event = Event::new(Action::InvitationSent)
            .on(email.as_str())
            .detail(role.as_str());
        audit::record(&mut tx, team_id, Some(actor), event).await?;
        tx.commit().await?;
        tracing::info!(%team_id, %role, "invitation sent");
        Ok(Ok(()))
    }

    /// Sends pending invitation `id` of the inviter's team again, with a fresh link (the old
    /// one stops working) and a fresh expiry.
    pub async fn resend_invitation(
        &self,
        inviter: Inviter<'_>,
        id: Uuid,
    ) -> Result<Result<(), InviteRefused>> {
        let Inviter { actor, team_id, .. } = inviter;
        let mut tx = self.db.begin().await?;
        if let Err(refused) = may_manage(&mut tx, team_id, actor).await? {
            return Ok(Err(InviteRefused::Team(refused)));
        }
        let token = SecretToken::generate();
        let Some((email, role)) = self
            .new_link(&mut tx, team_id, PendingBy::Id(id), &token, actor, None)
            .await?
        else {
            return Ok(Err(InviteRefused::Team(Refused::NotFound)));
        };
        if let Err(Capped) = self
            .send_invitation(&mut tx, inviter, &email, role, &token)
            .await?
        {
            return Ok(Err(InviteRefused::Capped));
        }
        let event = Event::new(Action::InvitationResent)
            .on(&email)
            .detail(role.as_str());
        audit::record(&mut tx, team_id, Some(actor), event).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Gives the pending invitation (found by `by`) the link `token`, keeping the old link's
    /// digest so that it is told "replaced". With `role`, it is (re)made for that role by the
    /// actor. Returns the address and role of the invitation it replaced, if there was one.
    async fn new_link(
        &self,
        conn: &mut PgConnection,
        team_id: Uuid,
        by: PendingBy<'_>,
        token: &SecretToken,
        actor: Actor<'_>,
        role: Option<Role>,
    ) -> Result<Option<(String, Role)>> {
        let (id, email) = match by {
            PendingBy::Id(id) => (Some(id), None),
            PendingBy::Email(email) => (None, Some(email)),
        };
        let ttl = self.invitation_ttl.as_secs_f64();
        let replaced = sqlx::query!(
            r#"WITH old AS (
                   SELECT id, token_hash FROM invitations
                   WHERE team_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL
                     AND (id = $2 OR lower(email) = lower($3))
                   FOR UPDATE
               ), kept AS (
                   INSERT INTO invitation_old_links (token_hash, invitation_id)
                   SELECT token_hash, id FROM old
               )
               UPDATE invitations i
               SET token_hash = $4, role = coalesce($5, i.role), invited_by = $6, sent_at = now(),
                   expires_at = now() + make_interval(secs => $7)
               FROM old WHERE i.id = old.id
               RETURNING i.email, i.role AS "role: Role""#,
            team_id,
            id,
            email,
            token.digest(),
            role.map(Role::as_str),
            actor.user_id,
            ttl,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = replaced {
            return Ok(Some((row.email, row.role)));
        }
        if let (Some(email), Some(role)) = (email, role) {
            sqlx::query!(
                "INSERT INTO invitations (team_id, email, role, token_hash, invited_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
                team_id,
                email,
                role.as_str(),
                token.digest(),
                actor.user_id,
                ttl,
            )
            .execute(conn)
            .await?;
        }
        Ok(None)
    }

    /// Queues the invitation email (capped like every email anyone can have sent to an address).
    async fn send_invitation(
        &self,
        conn: &mut PgConnection,
        inviter: Inviter<'_>,
        email: &str,
        role: Role,
        token: &SecretToken,
    ) -> Result<Result<bool, Capped>> {
        let message = TeamInvitation {
            team_name: inviter.team_name.to_owned(),
            inviter: inviter.actor.email.to_owned(),
            role: role.in_words(),
            link: self.mailer.link(&format!("/invite?token={}", token.as_str())),
            valid_days: self.invitation_ttl.as_secs() / (24 * 3600),
        };
        let key = format!("invitation:{}", hex_encode(token.digest()));
        Ok(mail::enqueue_capped(conn, &self.mailer, email, CapKind::Invitation, &key, &message).await?)
    }

    /// Revokes pending invitation `id` of the actor's team: its link stops working.
    pub async fn revoke_invitation(
        &self,
        actor: Actor<'_>,
        team_id: Uuid,
        id: Uuid,
    ) -> Result<Result<(), Refused>> {
        let mut tx = self.db.begin().await?;
        if let Err(refused) = may_manage(&mut tx, team_id, actor).await? {
            return Ok(Err(refused));
        }
        let revoked = sqlx::query!(
            r#"UPDATE invitations SET revoked_at = now()
               WHERE id = $1 AND team_id = $2 AND accepted_at IS NULL AND revoked_at IS NULL
               RETURNING email, role AS "role: Role""#,
            id,
            team_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(revoked) = revoked else {
            return Ok(Err(Refused::NotFound));
        };
        let event = Event::new(Action::InvitationRevoked)
            .on(&revoked.email)
            .detail(revoked.role.as_str());
        audit::record(&mut tx, team_id, Some(actor), event).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Accepts the invitation behind `token` for the signed-in `actor`, whose address must be
    /// the invited one: they join with the invited role (a member already keeps theirs), their
    /// address counts as verified (the link reached it), and the team becomes the current
    /// team of `session`. Of two people accepting one link at once, one joins.
    pub async fn accept_invitation(
        &self,
        actor: Actor<'_>,
        session: &SecretToken,
        token: &SecretToken,
    ) -> Result<Result<Uuid, AcceptRefused>> {
        // The team first, to take its lock before the invitation's (the order of every change).
        let team_id = match find(&self.db, token).await? {
            Ok(invitation) => invitation.team_id,
            Err(problem) => return Ok(Err(AcceptRefused::Link(problem))),
        };
        let mut tx = self.db.begin().await?;
        teams::lock(&mut tx, team_id, actor.user_id).await?;
        let invitation = match find_on(&mut tx, token).await? {
            Ok(invitation) => invitation,
            Err(problem) => return Ok(Err(AcceptRefused::Link(problem))),
        };
        if invitation.email.to_lowercase() != actor.email.to_lowercase() {
            return Ok(Err(AcceptRefused::OtherAddress(invitation.email)));
        }
        sqlx::query!(
            "INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            team_id,
            actor.user_id,
            invitation.role.as_str(),
        )
        .execute(&mut *tx)
        .await?;
        seats::queue(&mut tx, team_id).await?;
        sqlx::query!(
            "UPDATE invitations SET accepted_at = now(), accepted_by = $2 WHERE token_hash = $1",
            token.digest(),
            actor.user_id,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE users SET email_verified_at = coalesce(email_verified_at, now()), updated_at = now() WHERE id = $1",
            actor.user_id,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE sessions SET team_id = $2 WHERE id_hash = $1",
            session.digest(),
            team_id
        )
        .execute(&mut *tx)
        .await?;
        let event = Event::new(Action::InvitationAccepted)
            .on(&invitation.email)
            .detail(invitation.role.as_str());
        audit::record(&mut tx, team_id, Some(actor), event).await?;
        tx.commit().await?;
        tracing::info!(%team_id, user_id = %actor.user_id, "invitation accepted");
        Ok(Ok(team_id))
    }
}

/// How [`Accounts::new_link`] finds the pending invitation.
#[derive(Clone, Copy)]
enum PendingBy<'a> {
    Id(Uuid),
    Email(&'a str),
}

/// Whether the actor may resend and revoke the team's invitations (owner and admin).
async fn may_manage(conn: &mut PgConnection, team_id: Uuid, actor: Actor<'_>) -> Result<Result<(), Refused>> {
    let allowed = teams::lock(conn, team_id, actor.user_id)
        .await?
        .is_some_and(Role::may_manage_invitations);
    Ok(if allowed { Ok(()) } else { Err(Refused::NotAllowed) })
}

//! The teams a user belongs to, the one a session works in (its current team), and changes
//! to a team's members: roles, removals, leaving (SPEC, "Teams (B2B)"). The session query
//! joins the membership of the current team, so a session can only ever work in a team its
//! user belongs to.
//!
//! Every change to a team's members locks the team's row first ([`lock`]): changes to one
//! team take turns, so "is this the last owner?" is answered on the members as they are, and
//! two owners demoting each other at once cannot leave a team without one.

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    SecretToken,
    audit::{self, Action, Actor, Event},
};
use crate::{
    billing::seats,
    domain::{Role, TeamName},
    error::Result,
};

/// One of the user's teams, with their role in it.
pub struct MyTeam {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
}

/// A member of a team.
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub role: Role,
    pub since: OffsetDateTime,
}

/// The user's teams, in the order they joined them.
pub async fn of_user(db: &PgPool, user_id: Uuid) -> Result<Vec<MyTeam>> {
    Ok(sqlx::query_as!(
        MyTeam,
        r#"SELECT t.id, t.name, m.role AS "role: Role"
           FROM memberships m JOIN teams t ON t.id = m.team_id
           WHERE m.user_id = $1
           ORDER BY m.created_at, t.id"#,
        user_id,
    )
    .fetch_all(db)
    .await?)
}

/// The name of the team a user gets at signup: `ann's team` for `ann@example.com`.
pub fn personal_team_name(email: &str) -> String {
    let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
    format!("{local}'s team").chars().take(100).collect()
}

/// A new team named `name` with `user_id` as its owner (signup's personal team, or one the
/// user creates).
pub async fn insert_owned_by(conn: &mut PgConnection, user_id: Uuid, name: &str) -> Result<Uuid> {
    let team_id = sqlx::query_scalar!("INSERT INTO teams (name) VALUES ($1) RETURNING id", name)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query!(
        "INSERT INTO memberships (team_id, user_id, role) VALUES ($1, $2, $3)",
        team_id,
        user_id,
        Role::Owner.as_str(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(team_id)
}

/// A new team with `user_id` as its owner, made the current team of the session `token`.
pub async fn create(db: &PgPool, token: &SecretToken, user_id: Uuid, name: &TeamName) -> Result<Uuid> {
    let mut tx = db.begin().await?;
    let team_id = insert_owned_by(&mut tx, user_id, name.as_str()).await?;
    sqlx::query!(
        "UPDATE sessions SET team_id = $2 WHERE id_hash = $1",
        token.digest(),
        team_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%user_id, %team_id, "team created");
    Ok(team_id)
}

/// Makes `team_id` the current team of the session `token`, if its user is a member: one
/// statement, so a membership ended meanwhile is never switched to. Returns whether it was.
pub async fn switch(db: &PgPool, token: &SecretToken, user_id: Uuid, team_id: Uuid) -> Result<bool> {
    let switched = sqlx::query!(
        "UPDATE sessions s SET team_id = $3
         WHERE s.id_hash = $1 AND s.user_id = $2
           AND EXISTS (SELECT 1 FROM memberships m WHERE m.team_id = $3 AND m.user_id = $2)",
        token.digest(),
        user_id,
        team_id,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(switched == 1)
}

/// The members of `team_id`, owners first, then by when they joined.
pub async fn members(db: &PgPool, team_id: Uuid) -> Result<Vec<Member>> {
    Ok(sqlx::query_as!(
        Member,
        r#"SELECT u.id AS user_id, u.email, m.role AS "role: Role", m.created_at AS since
           FROM memberships m JOIN users u ON u.id = m.user_id
           WHERE m.team_id = $1
           ORDER BY m.role = $2 DESC, m.created_at, u.email"#,
        team_id,
        Role::Owner.as_str(),
    )
    .fetch_all(db)
    .await?)
}

/// Why a change to a team's members was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such member (or invitation) in this team: 404, whatever exists elsewhere.
    NotFound,
    /// The actor's role does not allow it: 403.
    NotAllowed,
    /// It would leave the team without an owner: 422.
    LastOwner,
}

/// Locks `team_id`'s row until the transaction ends (see the module's doc) and returns the
/// role of `user_id` in it as it is now (`None`: not, or no longer, a member).
pub async fn lock(conn: &mut PgConnection, team_id: Uuid, user_id: Uuid) -> Result<Option<Role>> {
    sqlx::query!("SELECT id FROM teams WHERE id = $1 FOR UPDATE", team_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(member(conn, team_id, user_id).await?.map(|(role, _)| role))
}

/// `user_id`'s role in `team_id` and their address, if they are a member.
async fn member(conn: &mut PgConnection, team_id: Uuid, user_id: Uuid) -> Result<Option<(Role, String)>> {
    let row = sqlx::query!(
        r#"SELECT m.role AS "role: Role", u.email
           FROM memberships m JOIN users u ON u.id = m.user_id
           WHERE m.team_id = $1 AND m.user_id = $2"#,
        team_id,
        user_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| (row.role, row.email)))
}

/// Whether `team_id` has a single owner (so that one may not stop being one).
async fn has_one_owner(conn: &mut PgConnection, team_id: Uuid) -> Result<bool> {
    let owners = sqlx::query_scalar!(
        r#"SELECT count(*) AS "owners!" FROM memberships WHERE team_id = $1 AND role = $2"#,
        team_id,
        Role::Owner.as_str(),
    )
    .fetch_one(conn)
    .await?;
    Ok(owners <= 1)
}

/// Gives the member `user_id` of the actor's current team the role `to`, as the actor's role
/// allows.
pub async fn change_role(
    db: &PgPool,
    actor: Actor<'_>,
    team_id: Uuid,
    user_id: Uuid,
    to: Role,
) -> Result<Result<(), Refused>> {
    let mut tx = db.begin().await?;
    let Some(actor_role) = lock(&mut tx, team_id, actor.user_id).await? else {
        return Ok(Err(Refused::NotAllowed));
    };
    let Some((from, email)) = member(&mut tx, team_id, user_id).await? else {
        return Ok(Err(Refused::NotFound));
    };
    if !actor_role.may_change_role(from, to) {
        return Ok(Err(Refused::NotAllowed));
    }
    if from == to {
        return Ok(Ok(()));
    }
    if from == Role::Owner && has_one_owner(&mut tx, team_id).await? {
        return Ok(Err(Refused::LastOwner));
    }
    sqlx::query!(
        "UPDATE memberships SET role = $3 WHERE team_id = $1 AND user_id = $2",
        team_id,
        user_id,
        to.as_str(),
    )
    .execute(&mut *tx)
    .await?;
    let detail = format!("{from} → {to}");
    let event = Event::new(Action::RoleChanged).on(&email).detail(&detail);
    audit::record(&mut tx, team_id, Some(actor), event).await?;
    tx.commit().await?;
    tracing::info!(%team_id, %user_id, %from, %to, "role changed");
    Ok(Ok(()))
}

/// Removes `user_id` from the team, as the actor's role allows; `user_id` may be the actor
/// (that is leaving).
pub async fn remove(
    db: &PgPool,
    actor: Actor<'_>,
    team_id: Uuid,
    user_id: Uuid,
) -> Result<Result<(), Refused>> {
    let mut tx = db.begin().await?;
    let Some(actor_role) = lock(&mut tx, team_id, actor.user_id).await? else {
        return Ok(Err(Refused::NotFound));
    };
    let Some((role, email)) = member(&mut tx, team_id, user_id).await? else {
        return Ok(Err(Refused::NotFound));
    };
    let leaving = user_id == actor.user_id;
    if !leaving && !actor_role.may_remove(role) {
        return Ok(Err(Refused::NotAllowed));
    }
    if role == Role::Owner && has_one_owner(&mut tx, team_id).await? {
        return Ok(Err(Refused::LastOwner));
    }
    sqlx::query!(
        "DELETE FROM memberships WHERE team_id = $1 AND user_id = $2",
        team_id,
        user_id
    )
    .execute(&mut *tx)
    .await?;
    move_sessions_off(&mut tx, user_id, &email, team_id).await?;
    seats::queue(&mut tx, team_id).await?;
    let event = if leaving {
        Event::new(Action::MemberLeft)
    } else {
        Event::new(Action::MemberRemoved).on(&email)
    };
    audit::record(&mut tx, team_id, Some(actor), event).await?;
    tx.commit().await?;
    tracing::info!(%team_id, %user_id, leaving, "member left the team");
    Ok(Ok(()))
}

/// Moves the sessions of `user_id` that work in `team_id` (which they just left) to their
/// first other team; a user left with no team gets a new personal one. Their sessions stay
/// signed in, and nobody is ever without a team.
async fn move_sessions_off(conn: &mut PgConnection, user_id: Uuid, email: &str, team_id: Uuid) -> Result<()> {
    let next = sqlx::query_scalar!(
        "SELECT team_id FROM memberships WHERE user_id = $1
         ORDER BY (role = $2) DESC, created_at LIMIT 1",
        user_id,
        Role::Owner.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    let next = match next {
        Some(next) => next,
        None => insert_owned_by(conn, user_id, &personal_team_name(email)).await?,
    };
    sqlx::query!(
        "UPDATE sessions SET team_id = $3 WHERE user_id = $1 AND team_id = $2",
        user_id,
        team_id,
        next,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets whether the team requires two-factor sign-in of its members (the owner's call).
pub async fn set_require_2fa(
    db: &PgPool,
    actor: Actor<'_>,
    team_id: Uuid,
    on: bool,
) -> Result<Result<(), Refused>> {
    let mut tx = db.begin().await?;
    if lock(&mut tx, team_id, actor.user_id).await? != Some(Role::Owner) {
        return Ok(Err(Refused::NotAllowed));
    }
    let changed = sqlx::query!(
        "UPDATE teams SET require_2fa = $2 WHERE id = $1 AND require_2fa <> $2",
        team_id,
        on
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 1 {
        let detail = if on {
            "two-factor sign-in required"
        } else {
            "two-factor sign-in not required"
        };
        let event = Event::new(Action::SecurityChanged).detail(detail);
        audit::record(&mut tx, team_id, Some(actor), event).await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}

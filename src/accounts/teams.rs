//! The teams a user belongs to, and the one a session works in (its current team: SPEC,
//! "Teams (B2B)"). The session query joins the membership of the current team, so a session
//! can only ever work in a team its user belongs to.

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::SecretToken;
use crate::{
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
        r#"SELECT u.email, m.role AS "role: Role", m.created_at AS since
           FROM memberships m JOIN users u ON u.id = m.user_id
           WHERE m.team_id = $1
           ORDER BY m.role = $2 DESC, m.created_at, u.email"#,
        team_id,
        Role::Owner.as_str(),
    )
    .fetch_all(db)
    .await?)
}

//! Deleting an account (SPEC, "Account security and lifecycle"): the user, their sessions,
//! memberships, tokens and security log, and each team they alone belonged to. Those teams'
//! subscriptions are canceled in Stripe first: if Stripe does not answer, nothing is deleted
//! (a retry cancels with the same idempotency keys). Rows about the user that stay (the team
//! audit log of teams that go on) lose the user's address and client address.

use std::net::IpAddr;

use stripe_billing::subscription::CancelSubscription;
use uuid::Uuid;

use super::{Accounts, PasswordRefused, Session};
use crate::{
    billing::{
        seats,
        stripe::{Patience, Stripe, StripeError},
    },
    domain::SubscriptionStatus,
    error::Result,
    mail::{self, AccountDeleted},
};

/// Why an account was not deleted.
#[derive(Debug)]
pub enum DeletionRefused {
    Password(PasswordRefused),
    /// The typed address is not the account's.
    NotConfirmed,
    /// The user is the last owner of this team, which has other members.
    LastOwner(String),
    /// Stripe did not cancel a subscription: nothing was deleted.
    Stripe(StripeError),
}

/// What Stripe answers to a cancellation (the rest is left to the webhooks).
#[derive(miniserde::Deserialize)]
struct Canceled {
    id: String,
}

impl Accounts {
    /// Deletes `session`'s account, with its password and its address typed as `confirm`.
    /// `bucket` is the client's rate-limit bucket (the password check is throttled).
    pub async fn delete_account(
        &self,
        session: &Session,
        password: &str,
        confirm: &str,
        bucket: IpAddr,
        stripe: Option<&Stripe>,
    ) -> Result<Result<(), DeletionRefused>> {
        if !confirm.trim().eq_ignore_ascii_case(&session.email) {
            return Ok(Err(DeletionRefused::NotConfirmed));
        }
        if let Err(refused) = self.check_password(session.user_id, password, bucket).await? {
            return Ok(Err(DeletionRefused::Password(refused)));
        }
        let user_id = session.user_id;
        let teams = sqlx::query!(
            r#"SELECT t.id, t.name, m.role = 'owner' AS "owner!",
                      (SELECT count(*) FROM memberships o WHERE o.team_id = t.id) AS "members!",
                      (SELECT count(*) FROM memberships o WHERE o.team_id = t.id AND o.role = 'owner') AS "owners!"
               FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1"#,
            user_id
        )
        .fetch_all(&self.db)
        .await?;
        if let Some(team) = teams.iter().find(|t| t.owner && t.owners == 1 && t.members > 1) {
            return Ok(Err(DeletionRefused::LastOwner(team.name.clone())));
        }
        let (alone, shared): (Vec<_>, Vec<_>) = teams.iter().partition(|team| team.members == 1);
        let alone: Vec<Uuid> = alone.iter().map(|team| team.id).collect();
        let live = sqlx::query_scalar!(
            "SELECT id FROM subscriptions WHERE team_id = ANY($1) AND status <> ALL($2)",
            &alone,
            SubscriptionStatus::ended_sql(),
        )
        .fetch_all(&self.db)
        .await?;
        if let Some(stripe) = stripe {
            for subscription in &live {
                let request = CancelSubscription::new(subscription.as_str());
                let key = format!("keel-cancel-{subscription}");
                let canceled: std::result::Result<Canceled, _> = stripe
                    .write_as("subscription.cancel", &request, &key, Patience::Interactive)
                    .await;
                match canceled {
                    Ok(canceled) => {
                        tracing::info!(subscription = %canceled.id, "canceled: its team is deleted")
                    }
                    Err(error) => return Ok(Err(DeletionRefused::Stripe(error))),
                }
            }
        } else if !live.is_empty() {
            tracing::warn!(
                ?live,
                "deleting teams with live subscriptions while billing is not configured"
            );
        }

        let mut tx = self.db.begin().await?;
        // The audit rows that stay lose what named the user (the table's trigger allows an
        // update that only erases).
        sqlx::query!(
            "UPDATE team_audit_log SET actor_email = NULL, client_ip = NULL WHERE actor_id = $1",
            user_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE team_audit_log SET subject = 'a deleted user' WHERE lower(subject) = lower($1)",
            session.email
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM invitations WHERE lower(email) = lower($1)",
            session.email
        )
        .execute(&mut *tx)
        .await?;
        // Only while the user is still alone there: a team someone joined meanwhile stays.
        sqlx::query!(
            "DELETE FROM teams t WHERE t.id = ANY($1)
               AND (SELECT count(*) FROM memberships m WHERE m.team_id = t.id) = 1",
            &alone
        )
        .execute(&mut *tx)
        .await?;
        // Sessions, memberships, tokens, 2FA, the security log and exports go with the user.
        sqlx::query!("DELETE FROM users WHERE id = $1", user_id)
            .execute(&mut *tx)
            .await?;
        for team in shared {
            seats::queue(&mut tx, team.id).await?;
        }
        let notice = AccountDeleted {
            address: session.email.clone(),
        };
        let key = format!("account-deleted:{user_id}");
        mail::enqueue(&mut tx, &self.mailer, &session.email, &key, &notice).await?;
        tx.commit().await?;
        tracing::warn!(%user_id, teams_deleted = alone.len(), subscriptions_canceled = live.len(), "account deleted");
        Ok(Ok(()))
    }
}

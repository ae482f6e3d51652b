//! Data export (SPEC, "Account security and lifecycle"): everything keel holds about a user,
//! as one JSON document built by a job and downloaded, signed in as that user, for 24 hours.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Accounts, security};
use crate::{
    error::Result,
    jobs::{self, Job, JobContext},
    mail::{self, DataExportReady},
};

/// How an export looks to the download link.
pub enum Download {
    Ready(Value),
    /// Still being built.
    Pending,
    /// Past its 24 hours.
    Expired,
}

impl Accounts {
    /// Queues the export of `user_id`'s data; the job emails the link.
    pub async fn request_export(&self, user_id: Uuid, client: std::net::IpAddr) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let export_id = sqlx::query_scalar!(
            "INSERT INTO data_exports (user_id) VALUES ($1) RETURNING id",
            user_id
        )
        .fetch_one(&mut *tx)
        .await?;
        jobs::enqueue(&mut tx, &ExportUserData { export_id }).await?;
        security::record(&mut tx, user_id, security::Event::DataExported, Some(client)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The export `id` if it is `user_id`'s (`None` for anyone else's, or none).
    pub async fn export(&self, user_id: Uuid, id: Uuid) -> Result<Option<Download>> {
        let row = sqlx::query!(
            r#"SELECT document, coalesce(expires_at <= now(), false) AS "expired!"
               FROM data_exports WHERE id = $1 AND user_id = $2"#,
            id,
            user_id
        )
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|row| match row.document {
            _ if row.expired => Download::Expired,
            Some(document) => Download::Ready(document),
            None => Download::Pending,
        }))
    }
}

/// Builds an export's document and emails its link (once: the document and the email are
/// written in one transaction, the email keyed by the export).
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportUserData {
    pub export_id: Uuid,
}

impl Job for ExportUserData {
    const KIND: &'static str = crate::jobs::JobKind::ExportUserData.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let mut tx = context.db.begin().await?;
        let built = sqlx::query!(
            r#"UPDATE data_exports e SET expires_at = now() + interval '24 hours', document = jsonb_build_object(
                   'exported_at', now(),
                   'profile', (SELECT jsonb_build_object('email', email, 'email_verified_at', email_verified_at,
                                                         'created_at', created_at)
                               FROM users WHERE id = e.user_id),
                   'two_factor', (SELECT jsonb_build_object('enabled_at', enabled_at) FROM two_factor
                                  WHERE user_id = e.user_id),
                   'teams', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                 'team', t.name, 'role', m.role, 'since', m.created_at,
                                 'subscription', (SELECT jsonb_build_object('status', s.status, 'price_id', s.price_id,
                                                      'current_period_end', s.current_period_end, 'seats', s.quantity)
                                                  FROM subscriptions s WHERE s.team_id = t.id
                                                  ORDER BY s.state_as_of DESC LIMIT 1)) ORDER BY m.created_at), '[]')
                             FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = e.user_id),
                   'sessions', (SELECT coalesce(jsonb_agg(jsonb_build_object('started', created_at,
                                    'last_seen', last_seen_at, 'user_agent', user_agent,
                                    'client_ip', host(client_ip)) ORDER BY created_at), '[]')
                                FROM sessions WHERE user_id = e.user_id),
                   'security_log', (SELECT coalesce(jsonb_agg(jsonb_build_object('at', at, 'event', event,
                                        'client_ip', host(client_ip)) ORDER BY id), '[]')
                                    FROM security_log WHERE user_id = e.user_id),
                   'team_activity', (SELECT coalesce(jsonb_agg(jsonb_build_object('team', t.name, 'at', a.at,
                                         'action', a.action, 'subject', a.subject, 'detail', a.detail,
                                         'client_ip', host(a.client_ip)) ORDER BY a.id), '[]')
                                     FROM team_audit_log a JOIN teams t ON t.id = a.team_id, users u
                                     WHERE u.id = e.user_id
                                       AND (a.actor_id = e.user_id OR lower(a.subject) = lower(u.email))))
               WHERE e.id = $1 AND e.document IS NULL
               RETURNING (SELECT email FROM users WHERE id = e.user_id) AS "email!""#,
            self.export_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        // Built by an earlier run (its email queued in the same transaction), or the user is gone.
        let Some(built) = built else { return Ok(()) };
        let message = DataExportReady {
            address: built.email.clone(),
            link: context
                .mailer
                .link(&format!("/settings/export/{}", self.export_id)),
        };
        let key = format!("data-export:{}", self.export_id);
        mail::enqueue(&mut tx, &context.mailer, &built.email, &key, &message).await?;
        tx.commit().await?;
        tracing::info!(export = %self.export_id, "data export ready");
        Ok(())
    }
}

/// Deletes exports past their 24 hours (with the hourly purge).
pub async fn purge_expired(db: &sqlx::PgPool) -> Result<u64> {
    let deleted = sqlx::query!("DELETE FROM data_exports WHERE expires_at < now()")
        .execute(db)
        .await?;
    Ok(deleted.rows_affected())
}

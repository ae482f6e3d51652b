//! Outgoing email. Each email is a type with three askama templates in its own folder under
//! `templates/emails/` (`subject.txt`, `body.txt`, `body.html`, the last extending
//! `emails/layout.html`). [`enqueue`] renders it into the `emails` outbox inside the caller's
//! transaction, with a [`DeliverEmail`] job; the job sends it over SMTP and marks it sent.
//!
//! Exactly once: the row is marked sent in the statement right after the SMTP server accepts
//! the message, and a job finding it sent does nothing. The one window left is a crash
//! between the server's acceptance and that write; the Message-ID is the same on every
//! attempt, so the receiving side can drop the duplicate. A 4xx answer (or no answer within
//! the timeout) fails the attempt and the job retries with backoff; a 5xx (the recipient or the
//! message refused for good) marks the email failed and stops.

mod templates;

use std::{str::FromStr as _, time::Duration};

use anyhow::Context as _;
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::{
    config::Config,
    jobs::{self, Job, JobContext},
};

pub use templates::SmtpTest;

/// Each SMTP command may take this long before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole delivery attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// An email rendered from its templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// An email that can be rendered (see the `email_templates!` macro in `templates.rs`).
pub trait Email {
    fn render(&self) -> anyhow::Result<Rendered>;
}

/// Sends email over SMTP, or, with no `SMTP_URL` (development), writes it to the log.
#[derive(Clone)]
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

/// Why a delivery attempt did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Refused for good (5xx): retrying cannot help.
    #[error("refused: {0}")]
    Permanent(String),
    /// Worth another attempt later (4xx, a timeout, the server unreachable).
    #[error("{0}")]
    Transient(String),
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let smtp_url = config.smtp_url.as_ref().map(|url| url.expose_secret());
        Self::new(&config.email_from, smtp_url)
    }

    /// Sends as `from` through `smtp_url` (lettre's URL form), or to the log without one.
    pub fn new(from: &str, smtp_url: Option<&str>) -> anyhow::Result<Self> {
        let from = Mailbox::from_str(from).context("EMAIL_FROM is not an email address")?;
        let transport = match smtp_url {
            None => None,
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("SMTP_URL is not a valid SMTP URL")?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
        };
        Ok(Self { transport, from })
    }

    /// Sends `email` to `to` now, outside the outbox (for `keel send-test-email`).
    pub async fn send_now(&self, to: &str, email: &impl Email) -> Result<(), DeliveryError> {
        let rendered = email
            .render()
            .map_err(|e| DeliveryError::Permanent(format!("{e:#}")))?;
        let message_id = self.new_message_id();
        self.deliver(to, &rendered, &message_id).await
    }

    fn new_message_id(&self) -> String {
        format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.from.email.domain())
    }

    async fn deliver(&self, to: &str, email: &Rendered, message_id: &str) -> Result<(), DeliveryError> {
        let Some(transport) = &self.transport else {
            tracing::info!(
                to,
                subject = email.subject,
                body = email.text,
                "email not sent (SMTP_URL is not set)"
            );
            return Ok(());
        };
        let recipient =
            Mailbox::from_str(to).map_err(|e| DeliveryError::Permanent(format!("recipient: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(recipient)
            .subject(&email.subject)
            .message_id(Some(message_id.to_owned()))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| DeliveryError::Permanent(format!("building the message: {e}")))?;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.is_permanent() => Err(DeliveryError::Permanent(error.to_string())),
            Ok(Err(error)) => Err(DeliveryError::Transient(error.to_string())),
            Err(_) => Err(DeliveryError::Transient(format!(
                "no answer within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Renders `email` into the outbox for `to`, with its delivery job, on `conn` (inside the
/// caller's transaction). `false` when an email with `idempotency_key` was already queued.
#[tracing::instrument(skip_all, fields(idempotency_key))]
pub async fn enqueue(
    conn: &mut PgConnection,
    mailer: &Mailer,
    to: &str,
    idempotency_key: &str,
    email: &impl Email,
) -> anyhow::Result<bool> {
    let rendered = email.render()?;
    let id = sqlx::query_scalar!(
        "INSERT INTO emails (idempotency_key, recipient, subject, text_body, html_body, message_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
        idempotency_key,
        to,
        rendered.subject,
        rendered.text,
        rendered.html,
        mailer.new_message_id(),
    )
    .fetch_optional(&mut *conn)
    .await
    .context("writing an email to the outbox")?;
    let Some(id) = id else { return Ok(false) };
    jobs::enqueue(conn, &DeliverEmail { email_id: id }).await?;
    Ok(true)
}

/// Delivers one email of the outbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliverEmail {
    pub email_id: i64,
}

impl Job for DeliverEmail {
    const KIND: &'static str = "mail.deliver";
    /// With the default backoff, about a day and a half of retries.
    const MAX_ATTEMPTS: i32 = 16;

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let pending = sqlx::query!(
            "SELECT recipient, subject, text_body, html_body, message_id
             FROM emails WHERE id = $1 AND status = 'pending'",
            self.email_id,
        )
        .fetch_optional(&context.db)
        .await?;
        // Sent or failed by an earlier attempt: nothing left to do.
        let Some(email) = pending else { return Ok(()) };
        let rendered = Rendered {
            subject: email.subject,
            text: email.text_body,
            html: email.html_body,
        };
        match context
            .mailer
            .deliver(&email.recipient, &rendered, &email.message_id)
            .await
        {
            Ok(()) => {
                sqlx::query!(
                    "UPDATE emails SET status = 'sent', sent_at = now(), last_error = NULL WHERE id = $1",
                    self.email_id
                )
                .execute(&context.db)
                .await
                .context("marking the email sent")?;
                tracing::info!(email_id = self.email_id, "email sent");
                Ok(())
            }
            Err(DeliveryError::Permanent(reason)) => {
                sqlx::query!(
                    "UPDATE emails SET status = 'failed', last_error = $2 WHERE id = $1",
                    self.email_id,
                    reason,
                )
                .execute(&context.db)
                .await
                .context("marking the email failed")?;
                tracing::warn!(
                    email_id = self.email_id,
                    reason,
                    "email refused for good; not retrying"
                );
                Ok(())
            }
            Err(DeliveryError::Transient(reason)) => {
                sqlx::query!(
                    "UPDATE emails SET last_error = $2 WHERE id = $1",
                    self.email_id,
                    reason
                )
                .execute(&context.db)
                .await?;
                anyhow::bail!("delivery failed, will retry: {reason}")
            }
        }
    }
}

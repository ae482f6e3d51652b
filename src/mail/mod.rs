//! Outgoing email. Each email is a type with three askama templates in its own folder under
//! `templates/emails/` (`subject.txt`, `body.txt`, `body.html`, the last extending
//! `emails/layout.html`). [`enqueue`] renders it into the `emails` outbox inside the caller's
//! transaction, with a [`DeliverEmail`] job; the job sends it over SMTP and marks it sent.
//!
//! Exactly once: delivery holds the email's row locked (`FOR UPDATE SKIP LOCKED`) while it
//! talks to the SMTP server and marks it sent in that same transaction, so two workers never
//! send one email, and a job finding it sent does nothing. The one window left is a crash
//! between the server's acceptance and the commit; the Message-ID is the same on every
//! attempt, so the receiving side can drop the duplicate. A refusal of the recipient or the
//! message (550–554) marks the email failed and stops; anything else (4xx, no answer, a
//! refused login) fails the attempt and the job retries with backoff, and the last attempt
//! marks the email failed.
//!
//! Emails anyone can trigger (verification, password reset) go through [`enqueue_capped`]
//! instead: per recipient, at most one of each kind a minute and ten an hour ([`cap`]).

pub mod cap;
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

pub use cap::{CapKind, Capped};
pub use templates::{
    AccessPaused, AccountDeleted, ConfirmNewEmail, DataExportReady, EmailChanged, PasswordChanged,
    PasswordReset, PaymentActionRequired, PaymentFailed, PaymentRecovered, PaymentRetriesExhausted, SmtpTest,
    TeamInvitation, TrialEnding, VerifyEmail,
};

/// Each SMTP command may take this long before the attempt counts as failed. (No timeout
/// around the whole send: cutting a pooled SMTP session midway would leave it out of step.)
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Where links in emails point (`BASE_URL`).
    base_url: url::Url,
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
        Ok(Self::new(&config.email_from, smtp_url)?.with_base_url(config.base_url.clone()))
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
        Ok(Self {
            transport,
            from,
            base_url: crate::config::defaults::BASE_URL
                .parse()
                .context("the default BASE_URL is a URL")?,
        })
    }

    /// Links in emails point at `base_url` (`BASE_URL`; the development default otherwise).
    pub fn with_base_url(mut self, base_url: url::Url) -> Self {
        self.base_url = base_url;
        self
    }

    /// The absolute URL of `path` (with its query) on this site, for a link in an email.
    pub fn link(&self, path: &str) -> String {
        crate::config::absolute_url(&self.base_url, path)
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
        match transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) if refuses_recipient_or_message(&error) => {
                Err(DeliveryError::Permanent(error.to_string()))
            }
            Err(error) => Err(DeliveryError::Transient(error.to_string())),
        }
    }
}

/// 550–554: this mailbox or this message is refused, and retrying will not change that. Other
/// 5xx answers (a failed login, TLS required, a syntax error) are about our setup: retried,
/// so that fixing the setup delivers the email.
fn refuses_recipient_or_message(error: &lettre::transport::smtp::Error) -> bool {
    error.is_permanent()
        && error
            .status()
            .is_some_and(|code| (550..=554).contains(&u16::from(code)))
}

/// Renders `email` into the outbox for `to`, with its delivery job, on `conn` (inside the
/// caller's transaction). `false` when an email with `idempotency_key` was already queued.
#[tracing::instrument(skip_all, fields(idempotency_key = %idempotency_key))]
pub async fn enqueue(
    conn: &mut PgConnection,
    mailer: &Mailer,
    to: &str,
    idempotency_key: &str,
    email: &impl Email,
) -> anyhow::Result<bool> {
    insert(conn, mailer, to, idempotency_key, None, email).await
}

/// [`enqueue`] for an email of a capped `kind`: `Err(Capped)`, and nothing written, when
/// `to`'s mailbox has had its share ([`cap`]). Call it inside a transaction: the mailbox stays
/// locked until that ends, so concurrent senders queue one email between them.
#[tracing::instrument(skip_all, fields(idempotency_key = %idempotency_key, kind = kind.as_str()))]
pub async fn enqueue_capped(
    conn: &mut PgConnection,
    mailer: &Mailer,
    to: &str,
    kind: CapKind,
    idempotency_key: &str,
    email: &impl Email,
) -> anyhow::Result<Result<bool, Capped>> {
    let recipient = cap::recipient_key(to);
    if let Err(capped) = cap::check(conn, &recipient, kind).await? {
        return Ok(Err(capped));
    }
    let queued = insert(conn, mailer, to, idempotency_key, Some((&recipient, kind)), email).await?;
    Ok(Ok(queued))
}

async fn insert(
    conn: &mut PgConnection,
    mailer: &Mailer,
    to: &str,
    idempotency_key: &str,
    cap: Option<(&str, CapKind)>,
    email: &impl Email,
) -> anyhow::Result<bool> {
    let rendered = email.render()?;
    let id = sqlx::query_scalar!(
        "INSERT INTO emails (idempotency_key, recipient, subject, text_body, html_body, message_id,
                             cap_recipient, cap_kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
        idempotency_key,
        to,
        rendered.subject,
        rendered.text,
        rendered.html,
        mailer.new_message_id(),
        cap.map(|(recipient, _)| recipient),
        cap.map(|(_, kind)| kind.as_str()),
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
    const KIND: &'static str = crate::jobs::JobKind::DeliverEmail.as_str();
    /// With the default backoff (5 s doubling, at most an hour, jittered), between about 19 and
    /// 38 hours of retries: an SMTP outage of a day loses nothing.
    const MAX_ATTEMPTS: i32 = 48;

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let mut tx = context.db.begin().await?;
        // Locked for the whole delivery: a second worker (after a lost lease) skips it.
        let pending = sqlx::query!(
            "SELECT recipient, subject, text_body, html_body, message_id, status
             FROM emails WHERE id = $1
             FOR UPDATE SKIP LOCKED",
            self.email_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(email) = pending else {
            anyhow::bail!(
                "email {} is being delivered by another worker (or is gone)",
                self.email_id
            );
        };
        // Sent or failed by an earlier attempt: nothing left to do.
        if email.status != "pending" {
            return Ok(());
        }
        let rendered = Rendered {
            subject: email.subject,
            text: email.text_body,
            html: email.html_body,
        };
        let outcome = match context
            .mailer
            .deliver(&email.recipient, &rendered, &email.message_id)
            .await
        {
            Ok(()) => Outcome::Sent,
            Err(DeliveryError::Permanent(reason)) => Outcome::Refused(reason),
            Err(DeliveryError::Transient(reason)) if context.attempt >= Self::MAX_ATTEMPTS => {
                Outcome::GaveUp(format!("gave up after {} attempts: {reason}", context.attempt))
            }
            Err(DeliveryError::Transient(reason)) => Outcome::Retry(reason),
        };
        let (status, error) = match &outcome {
            Outcome::Sent => ("sent", None),
            Outcome::Refused(reason) | Outcome::GaveUp(reason) => ("failed", Some(reason)),
            Outcome::Retry(reason) => ("pending", Some(reason)),
        };
        sqlx::query!(
            // A sent email's bodies are dropped: they may hold a single-use link (verification,
            // reset), and the database must never hold a usable one. Subject, recipient and
            // Message-ID stay for support.
            "UPDATE emails
             SET status = $2, last_error = $3, sent_at = CASE WHEN $2 = 'sent' THEN now() END,
                 text_body = CASE WHEN $2 = 'sent' THEN '' ELSE text_body END,
                 html_body = CASE WHEN $2 = 'sent' THEN '' ELSE html_body END
             WHERE id = $1",
            self.email_id,
            status,
            error,
        )
        .execute(&mut *tx)
        .await
        .context("recording the delivery")?;
        tx.commit().await.context("recording the delivery")?;
        match outcome {
            Outcome::Sent => {
                tracing::info!(email_id = self.email_id, "email sent");
                Ok(())
            }
            Outcome::Refused(reason) => {
                tracing::warn!(
                    email_id = self.email_id,
                    reason,
                    "email refused for good; not retrying"
                );
                Ok(())
            }
            // Fails the job too, so it shows in `keel jobs list`.
            Outcome::GaveUp(reason) => anyhow::bail!(reason),
            Outcome::Retry(reason) => anyhow::bail!("delivery failed, will retry: {reason}"),
        }
    }
}

/// How one delivery attempt ended.
enum Outcome {
    Sent,
    /// The server refused the recipient or the message (550–554).
    Refused(String),
    /// A transient failure on the last attempt.
    GaveUp(String),
    /// A transient failure with attempts left.
    Retry(String),
}

/// Deletes sent and failed emails older than `older_than_days`: they hold message bodies,
/// with links and tokens, that are no use once delivered.
#[derive(Debug, Serialize, Deserialize)]
pub struct PurgeOldEmails {
    pub older_than_days: u32,
}

impl Job for PurgeOldEmails {
    const KIND: &'static str = crate::jobs::JobKind::PurgeOldEmails.as_str();

    async fn run(self, context: JobContext) -> anyhow::Result<()> {
        let purged = sqlx::query!(
            "DELETE FROM emails
             WHERE status IN ('sent', 'failed') AND created_at < now() - make_interval(days => $1)",
            self.older_than_days as i32,
        )
        .execute(&context.db)
        .await?
        .rows_affected();
        tracing::info!(purged, "purged old emails");
        Ok(())
    }
}

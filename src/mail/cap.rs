//! The cap on email to one recipient (SPEC: "Email to one recipient is capped"): the emails
//! anyone can make keel send to an address (verification, password reset, team invitation,
//! the confirmation of a new address) are limited per recipient, whatever the number of
//! clients or accounts asking: one of each kind a minute and [`PER_HOUR`] in all an hour.
//! Spellings that reach one mailbox (case, `+tag`) are one recipient.
//!
//! Checked in the transaction that writes the email to the outbox, under an advisory lock on
//! the recipient, so parallel requests send one email, and a refused email leaves nothing.
//! Billing notices and the password-changed notice are not capped: they are caused by the
//! account's owner or by Stripe, not by whoever fills in a form.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgConnection;

/// The kinds of capped email, each with its own one-a-minute allowance per recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapKind {
    Verification,
    PasswordReset,
    /// A team invitation: anyone who can make a team can invite any address.
    Invitation,
    /// The confirmation of a new address: anyone with an account can name any address.
    EmailChange,
}

impl CapKind {
    /// As stored in `emails.cap_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapKind::Verification => "verification",
            CapKind::PasswordReset => "password_reset",
            CapKind::Invitation => "invitation",
            CapKind::EmailChange => "email_change",
        }
    }
}

/// One email of a kind per recipient within this period.
pub const PER_KIND_EVERY: Duration = Duration::from_secs(60);
/// Capped emails of all kinds per recipient within an hour.
pub const PER_HOUR: i64 = 10;

/// The email was not queued: the recipient has had their share of this kind (or of all).
#[derive(Debug, PartialEq, Eq)]
pub struct Capped;

/// The mailbox an address reaches, for counting: lower case, without a `+tag` in its local
/// part (`Ann+news@Example.com` → `ann@example.com`).
pub fn recipient_key(address: &str) -> String {
    let address = address.trim().to_lowercase();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address;
    };
    match local.split_once('+') {
        Some((base, _)) if !base.is_empty() => format!("{base}@{domain}"),
        _ => address,
    }
}

/// Whether another `kind` email may go to the mailbox `recipient` (a [`recipient_key`]) now.
/// Holds a lock on the recipient until the caller's transaction ends, so that the check and
/// the caller's insert are one step for concurrent senders.
pub(super) async fn check(
    conn: &mut PgConnection,
    recipient: &str,
    kind: CapKind,
) -> anyhow::Result<Result<(), Capped>> {
    // Its own statement: under READ COMMITTED the count below then reads a snapshot taken
    // after the lock was granted, which includes the email of the transaction that held it.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(recipient)
        .execute(&mut *conn)
        .await
        .context("locking the recipient's email cap")?;
    let counts = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE cap_kind = $2 AND created_at > now() - make_interval(secs => $3)) AS "same_kind!",
                  count(*) AS "all_kinds!"
           FROM emails
           WHERE cap_recipient = $1 AND created_at > now() - interval '1 hour'"#,
        recipient,
        kind.as_str(),
        PER_KIND_EVERY.as_secs_f64(),
    )
    .fetch_one(conn)
    .await
    .context("counting the recipient's recent emails")?;
    Ok(if counts.same_kind > 0 || counts.all_kinds >= PER_HOUR {
        Err(Capped)
    } else {
        Ok(())
    })
}

/// The first key of the two-key advisory lock: keeps these locks apart from others (sqlx's
/// migration lock uses the one-key form).
const LOCK_CLASS: i32 = 0x6d61_696c; // "mail"

#[cfg(test)]
mod tests {
    use super::recipient_key;

    #[test]
    fn spellings_of_one_mailbox_are_one_recipient() {
        for spelling in [
            "ann@example.com",
            "Ann@Example.COM",
            "ann+news@example.com",
            "ANN+1+2@example.com",
            " ann+@example.com ",
        ] {
            assert_eq!(recipient_key(spelling), "ann@example.com", "{spelling}");
        }
    }

    #[test]
    fn other_mailboxes_stay_apart() {
        assert_eq!(recipient_key("anne@example.com"), "anne@example.com");
        assert_eq!(recipient_key("ann@example.org"), "ann@example.org");
        // A local part that is all tag is kept whole rather than emptied.
        assert_eq!(recipient_key("+ann@example.com"), "+ann@example.com");
        // A `+` in the domain is not a tag.
        assert_eq!(recipient_key("ann@ex+ample.com"), "ann@ex+ample.com");
        assert_eq!(recipient_key("not an address"), "not an address");
    }
}

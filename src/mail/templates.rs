//! The emails keel sends, each rendered from its folder under `templates/emails/`.

use askama::Template as _;

use super::{Email, Rendered};

/// Implements [`Email`] for a type from its three templates, which see the value as `email`.
macro_rules! email_templates {
    ($email:ident, subject: $subject:literal, text: $text:literal, html: $html:literal) => {
        impl Email for $email {
            fn render(&self) -> anyhow::Result<Rendered> {
                #[derive(askama::Template)]
                #[template(path = $subject)]
                #[allow(dead_code)] // a subject often needs no field
                struct Subject<'a> {
                    email: &'a $email,
                }
                #[derive(askama::Template)]
                #[template(path = $text)]
                struct Text<'a> {
                    email: &'a $email,
                }
                #[derive(askama::Template)]
                #[template(path = $html)]
                struct Html<'a> {
                    email: &'a $email,
                }
                Ok(Rendered {
                    subject: Subject { email: self }.render()?.trim().to_owned(),
                    text: Text { email: self }.render()?,
                    html: Html { email: self }.render()?,
                })
            }
        }
    };
}

/// Sent by `keel send-test-email` to check the SMTP settings.
pub struct SmtpTest {
    pub base_url: String,
}

email_templates!(
    SmtpTest,
    subject: "emails/smtp_test/subject.txt",
    text: "emails/smtp_test/body.txt",
    html: "emails/smtp_test/body.html"
);

/// Sent at signup (and on request): the link proves the address belongs to the user.
pub struct VerifyEmail {
    pub address: String,
    pub link: String,
}

email_templates!(
    VerifyEmail,
    subject: "emails/verify_email/subject.txt",
    text: "emails/verify_email/body.txt",
    html: "emails/verify_email/body.html"
);

/// Sent by forgot-password when the account exists.
pub struct PasswordReset {
    pub address: String,
    pub link: String,
}

email_templates!(
    PasswordReset,
    subject: "emails/password_reset/subject.txt",
    text: "emails/password_reset/body.txt",
    html: "emails/password_reset/body.html"
);

/// Sent after a password change or reset, in case it was not the owner.
pub struct PasswordChanged {
    pub address: String,
    pub reset_link: String,
}

email_templates!(
    PasswordChanged,
    subject: "emails/password_changed/subject.txt",
    text: "emails/password_changed/body.txt",
    html: "emails/password_changed/body.html"
);

/// Sent to a new address: following the link makes it the account's address.
pub struct ConfirmNewEmail {
    pub address: String,
    pub link: String,
}

email_templates!(
    ConfirmNewEmail,
    subject: "emails/confirm_new_email/subject.txt",
    text: "emails/confirm_new_email/body.txt",
    html: "emails/confirm_new_email/body.html"
);

/// Sent to the old address once the new one is confirmed, with a link that restores it.
pub struct EmailChanged {
    pub old_address: String,
    pub new_address: String,
    pub revert_link: String,
}

email_templates!(
    EmailChanged,
    subject: "emails/email_changed/subject.txt",
    text: "emails/email_changed/body.txt",
    html: "emails/email_changed/body.html"
);

/// The user's data export is ready: a link to download it, signed in.
pub struct DataExportReady {
    pub address: String,
    pub link: String,
}

email_templates!(
    DataExportReady,
    subject: "emails/data_export/subject.txt",
    text: "emails/data_export/body.txt",
    html: "emails/data_export/body.html"
);

/// The account was deleted (sent to its address, after).
pub struct AccountDeleted {
    pub address: String,
}

email_templates!(
    AccountDeleted,
    subject: "emails/account_deleted/subject.txt",
    text: "emails/account_deleted/body.txt",
    html: "emails/account_deleted/body.html"
);

/// An invitation to join a team: the link shows it and lets the invitee accept.
pub struct TeamInvitation {
    pub team_name: String,
    /// Who invited them (their address).
    pub inviter: String,
    /// The role they will have, in words.
    pub role: &'static str,
    pub link: String,
    pub valid_days: u64,
}

email_templates!(
    TeamInvitation,
    subject: "emails/team_invitation/subject.txt",
    text: "emails/team_invitation/body.txt",
    html: "emails/team_invitation/body.html"
);

/// Dunning: a subscription payment failed and Stripe will try again.
pub struct PaymentFailed {
    pub billing_link: String,
    pub attempt: i64,
}

email_templates!(
    PaymentFailed,
    subject: "emails/payment_failed/subject.txt",
    text: "emails/payment_failed/body.txt",
    html: "emails/payment_failed/body.html"
);

/// Dunning: the last automatic attempt failed.
pub struct PaymentRetriesExhausted {
    pub billing_link: String,
}

email_templates!(
    PaymentRetriesExhausted,
    subject: "emails/payment_final_notice/subject.txt",
    text: "emails/payment_final_notice/body.txt",
    html: "emails/payment_final_notice/body.html"
);

/// Dunning is over: a payment went through.
pub struct PaymentRecovered {
    pub billing_link: String,
}

email_templates!(
    PaymentRecovered,
    subject: "emails/payment_recovered/subject.txt",
    text: "emails/payment_recovered/body.txt",
    html: "emails/payment_recovered/body.html"
);

/// The bank wants the card holder to confirm the payment (3-D Secure).
pub struct PaymentActionRequired {
    pub invoice_link: String,
}

email_templates!(
    PaymentActionRequired,
    subject: "emails/payment_action_required/subject.txt",
    text: "emails/payment_action_required/body.txt",
    html: "emails/payment_action_required/body.html"
);

/// The grace period after failed payments is over: paid features are paused.
pub struct AccessPaused {
    pub billing_link: String,
}

email_templates!(
    AccessPaused,
    subject: "emails/access_paused/subject.txt",
    text: "emails/access_paused/body.txt",
    html: "emails/access_paused/body.html"
);

/// A trial ends in a few days.
pub struct TrialEnding {
    pub billing_link: String,
    /// "on 2026-12-01", or "soon".
    pub ends_on: String,
}

email_templates!(
    TrialEnding,
    subject: "emails/trial_ending/subject.txt",
    text: "emails/trial_ending/body.txt",
    html: "emails/trial_ending/body.html"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_email_renders_all_three_parts() {
        let rendered = SmtpTest {
            base_url: "https://app.example.com/?a=1&b=<2>".into(),
        }
        .render()
        .unwrap();
        assert_eq!(rendered.subject, "Your SMTP settings work");
        assert!(
            rendered.text.contains("https://app.example.com/?a=1&b=<2>"),
            "text is not escaped"
        );
        assert!(
            rendered
                .html
                .contains("https://app.example.com/?a=1&#38;b=&#60;2&#62;"),
            "HTML is escaped"
        );
        assert!(!rendered.html.contains("<2>"));
        assert!(rendered.html.starts_with("<!doctype html>"));
    }
}

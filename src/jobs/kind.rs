//! Every kind of job keel defines, in one list. A job type's `Job::KIND` is one of these, and
//! the worker must register each (`jobs::registry()`): a unit test fails otherwise, so no job
//! is enqueued that no worker will ever claim.

/// The enum and its `ALL` come from one list, so neither can miss a kind.
macro_rules! job_kinds {
    ($($variant:ident = $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum JobKind {
            $($variant,)*
        }

        impl JobKind {
            pub const ALL: &'static [JobKind] = &[$(JobKind::$variant,)*];

            /// As stored in `jobs.kind`: keep it stable once jobs of this kind may be queued.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(JobKind::$variant => $name,)*
                }
            }
        }
    };
}

job_kinds! {
    PurgeDeadJobs = "jobs.purge_dead",
    DeliverEmail = "mail.deliver",
    PurgeOldEmails = "mail.purge_old",
    SendPasswordReset = "accounts.send_password_reset",
    PurgeExpiredAuth = "accounts.purge_expired",
    ExportUserData = "accounts.export_data",
    ProcessStripeEvent = "stripe.process_event",
    NotifyGraceEnded = "stripe.notify_grace_ended",
    ReconcileSubscriptions = "stripe.reconcile",
    SyncSeats = "stripe.sync_seats",
}

//! Waking the workers after a commit, coalesced.
//!
//! The `jobs` insert trigger notifies the workers from inside the enqueuing transaction, which
//! makes PostgreSQL commit such transactions one at a time (see the migration
//! `20261122080000_jobs_notify_opt_out.sql`). A path that enqueues at a high rate (webhook
//! ingest) opts out of the trigger for its transaction and calls [`Waker::wake`] after its
//! commit instead: one task sends `NOTIFY`, and wakes asked for while it does are folded into
//! the next one, so a flood of commits costs a handful of notifications.

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::queue::NOTIFY_CHANNEL;

/// Cheap to clone; the notifying task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Waker(mpsc::Sender<()>);

impl Waker {
    pub fn start(db: PgPool) -> Self {
        // One slot: a wake asked for while one is pending is already covered by it.
        let (sender, mut wakes) = mpsc::channel(1);
        tokio::spawn(async move {
            while wakes.recv().await.is_some() {
                // A notification lost in a crash costs nothing (workers also poll), so its
                // transaction does not wait for the WAL flush.
                let sent =
                    sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
                        .bind(NOTIFY_CHANNEL)
                        .execute(&db)
                        .await;
                if let Err(error) = sent {
                    tracing::warn!(%error, "cannot wake the job workers; they will find the job when they next poll");
                }
            }
        });
        Self(sender)
    }

    /// Asks for a notification to the workers, soon; never waits.
    pub fn wake(&self) {
        // Full: a notification is already pending. Closed: shutting down.
        let _ = self.0.try_send(());
    }
}

//! Periodic work: each entry enqueues a job once per period across all running instances.
//!
//! Periods are aligned to the Unix epoch (a daily entry's periods start at 00:00 UTC). An
//! instance that sees a new period moves `job_schedules.last_period` forward with a
//! compare-and-set and enqueues the job in the same transaction; every other instance's
//! compare-and-set for that period finds nothing to move, so the job is enqueued once.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::{Job, queue};

struct Entry {
    name: &'static str,
    period: Duration,
    kind: &'static str,
    max_attempts: i32,
    /// Builds the payload for the period starting at the given time.
    payload: Box<dyn Fn(OffsetDateTime) -> anyhow::Result<serde_json::Value> + Send + Sync>,
}

#[derive(Default)]
pub struct Schedule {
    entries: Vec<Entry>,
}

impl Schedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enqueues `job(period_start)` once every `period` (at least one second).
    pub fn every<J: Job>(
        mut self,
        name: &'static str,
        period: Duration,
        job: impl Fn(OffsetDateTime) -> J + Send + Sync + 'static,
    ) -> Self {
        self.entries.push(Entry {
            name,
            period: period.max(Duration::from_secs(1)),
            kind: J::KIND,
            max_attempts: J::MAX_ATTEMPTS,
            payload: Box::new(move |start| queue::to_payload(&job(start))),
        });
        self
    }

    /// The kinds of job this schedule enqueues.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.entries.iter().map(|entry| entry.kind).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How often to look for new periods: often enough for the shortest period.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .entries
            .iter()
            .map(|e| e.period)
            .min()
            .unwrap_or(Duration::from_secs(60));
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
    }

    /// Enqueues every entry whose current period has not been enqueued yet. Returns how many
    /// this call enqueued.
    pub async fn enqueue_due(&self, db: &PgPool) -> anyhow::Result<usize> {
        let now = OffsetDateTime::now_utc();
        let mut enqueued = 0;
        for entry in &self.entries {
            let start = period_start(now, entry.period);
            let mut tx = db.begin().await?;
            let claimed = sqlx::query_scalar!(
                "INSERT INTO job_schedules (name, last_period) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET last_period = excluded.last_period
                 WHERE job_schedules.last_period < excluded.last_period
                 RETURNING name",
                entry.name,
                start,
            )
            .fetch_optional(&mut *tx)
            .await
            .with_context(|| format!("claiming schedule {}", entry.name))?;
            if claimed.is_some() {
                let payload = (entry.payload)(start)?;
                let options = queue::EnqueueOptions::default();
                queue::insert(&mut tx, entry.kind, &payload, entry.max_attempts, options).await?;
                tx.commit().await?;
                tracing::info!(schedule = entry.name, period_start = %start, "enqueued scheduled job");
                enqueued += 1;
            }
        }
        Ok(enqueued)
    }
}

/// The start of the period of length `period` that contains `now`.
fn period_start(now: OffsetDateTime, period: Duration) -> OffsetDateTime {
    let nanos = now.unix_timestamp_nanos();
    let period = period.as_nanos() as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(period)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_aligned_to_the_epoch() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_310_141).unwrap(); // 2026-11-22 01:15:41
        let day = period_start(t, Duration::from_secs(86_400));
        assert_eq!(day.unix_timestamp(), 1_795_305_600); // 00:00 UTC
        let minute = period_start(t, Duration::from_secs(60));
        assert_eq!(minute.unix_timestamp(), 1_795_310_100);
        assert_eq!(period_start(minute, Duration::from_secs(60)), minute);
    }
}

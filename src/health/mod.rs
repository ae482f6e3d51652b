//! Dependency health in the IETF "Health Check Response Format for HTTP APIs" draft
//! (draft-inadarei-api-health-check), as `/health` serves it.
//!
//! Each check runs under its own timeout, so a hung database costs about one second, never a
//! hung request. Concurrent callers share one check in flight, and a result is reused for up to
//! `REUSE_FOR`, so `/health` cannot be used to flood PostgreSQL or Redis.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::PgPool;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::Mutex;

use crate::cache::Cache;

/// How long one check result may be served again.
pub const REUSE_FOR: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One entry of `checks`, e.g. `postgres:responseTime`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub component_type: &'static str,
    /// A number: milliseconds with a fraction for datastores, whole seconds for uptime.
    pub observed_value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<&'static str>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The whole `/health` body.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub status: Status,
    pub version: &'static str,
    pub release_id: &'static str,
    pub service_id: &'static str,
    pub checks: BTreeMap<&'static str, [Check; 1]>,
}

/// The dependency checks (PostgreSQL, Redis) as last run.
#[derive(Clone, Debug)]
struct DependencyChecks {
    postgres: Check,
    redis: Check,
    ran_at: Instant,
}

pub struct HealthChecker {
    db: PgPool,
    cache: Cache,
    timeout: Duration,
    started_at: Instant,
    /// The last result. Holding the lock while checking is what makes concurrent callers wait
    /// for, and then share, the one check in flight.
    last: Mutex<Option<Arc<DependencyChecks>>>,
}

impl HealthChecker {
    pub fn new(db: PgPool, cache: Cache, timeout: Duration) -> Self {
        Self {
            db,
            cache,
            timeout,
            started_at: Instant::now(),
            last: Mutex::new(None),
        }
    }

    pub async fn report(&self) -> Report {
        let checks = self.dependency_checks().await;
        let uptime = Check {
            component_type: "system",
            observed_value: self.started_at.elapsed().as_secs().into(),
            observed_unit: Some("s"),
            status: Status::Pass,
            time: None,
            output: None,
        };
        // The auth limits count in Redis; while it fails they count per instance (SPEC
        // "Scale-out"): worth a warning, not a failure.
        let local = self.cache.limits_are_local();
        let limits = Check {
            component_type: "component",
            observed_value: if local { "per-instance" } else { "redis" }.into(),
            observed_unit: None,
            status: if local { Status::Warn } else { Status::Pass },
            time: None,
            output: local.then(|| {
                "Redis failed the last limit command: login backoff and the auth forms' budget are counted per instance".to_owned()
            }),
        };
        let status = [checks.postgres.status, checks.redis.status, limits.status]
            .into_iter()
            .max_by_key(|s| match s {
                Status::Pass => 0,
                Status::Warn => 1,
                Status::Fail => 2,
            })
            .unwrap_or(Status::Pass);
        Report {
            status,
            version: "1",
            release_id: env!("CARGO_PKG_VERSION"),
            service_id: crate::NAME,
            checks: BTreeMap::from([
                ("postgres:responseTime", [checks.postgres.clone()]),
                ("redis:responseTime", [checks.redis.clone()]),
                ("rateLimits", [limits]),
                ("uptime", [uptime]),
            ]),
        }
    }

    async fn dependency_checks(&self) -> Arc<DependencyChecks> {
        let mut last = self.last.lock().await;
        if let Some(checks) = last.as_ref().filter(|c| c.ran_at.elapsed() < REUSE_FOR) {
            return Arc::clone(checks);
        }
        let (postgres, redis) = tokio::join!(
            timed(self.timeout, async {
                sqlx::query("SELECT 1").execute(&self.db).await.map(drop)
            }),
            timed(self.timeout, self.cache.ping()),
        );
        let checks = Arc::new(DependencyChecks {
            postgres,
            redis,
            ran_at: Instant::now(),
        });
        *last = Some(Arc::clone(&checks));
        checks
    }
}

/// Runs one datastore check under `timeout` and describes the outcome.
async fn timed<E: std::fmt::Display>(timeout: Duration, check: impl Future<Output = Result<(), E>>) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, check).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let output = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
    };
    Check {
        component_type: "datastore",
        observed_value: ((elapsed_ms * 1000.0).round() / 1000.0).into(),
        observed_unit: Some("ms"),
        status: if output.is_none() {
            Status::Pass
        } else {
            Status::Fail
        },
        time: OffsetDateTime::now_utc().format(&Rfc3339).ok(),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_hangs_fails_at_its_timeout() {
        let started = Instant::now();
        let check = timed(Duration::from_millis(50), async {
            std::future::pending::<Result<(), String>>().await
        })
        .await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.output.as_deref(), Some("no answer within 50 ms"));
    }

    #[tokio::test]
    async fn a_check_that_errors_says_why() {
        let check = timed(Duration::from_secs(1), async {
            Err::<(), _>("connection refused")
        })
        .await;
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.output.as_deref(), Some("connection refused"));
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["componentType"], "datastore");
        assert_eq!(json["observedUnit"], "ms");
        assert_eq!(json["status"], "fail");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn a_passing_check_has_no_output() {
        let check = timed(Duration::from_secs(1), async { Ok::<(), String>(()) }).await;
        assert_eq!(check.status, Status::Pass);
        let json = serde_json::to_value(&check).unwrap();
        assert!(json.get("output").is_none());
    }
}

//! Per-account login backoff, keyed by the submitted email whether or not an account has it,
//! so the answer never tells whether one exists.
//!
//! After `FREE_FAILURES` failed logins within `WINDOW`, each further failure locks the address
//! for twice as long as the one before (1 s, 2 s, 4 s … up to `MAX_LOCK`). A success clears it.
//! An attempt is counted before its password is checked (see [`LoginThrottle::begin`]).
//! State lives in Redis (shared by every instance); while Redis is down, each process keeps
//! its own count, so logins keep working and stay throttled.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use crate::{cache::Cache, domain::EmailAddress};

const FREE_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Addresses the in-process fallback remembers at most.
const LOCAL_CAPACITY: usize = 10_000;

/// What a login attempt is counted against: the account when the address names one (so every
/// spelling of an address shares one count, whatever case folding the database applies),
/// else the address as typed, lower-cased.
pub struct AccountKey(String);

impl AccountKey {
    pub fn new(email: &EmailAddress, account: Option<uuid::Uuid>) -> Self {
        match account {
            Some(id) => Self(format!("user:{id}")),
            None => Self(format!("email:{}", email.normalized())),
        }
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    cache: Cache,
    local: Arc<Mutex<HashMap<String, Local>>>,
}

struct Local {
    failures: u32,
    window_ends: Instant,
    locked_until: Instant,
}

/// Atomically: the lock's remaining milliseconds if the account is locked; else count this
/// attempt and, from the `free`-th on, lock for 2^(n − free) s (at most `max_lock`) so that
/// the attempts after it wait. Returns 0 when the attempt may go ahead.
static BEGIN_ATTEMPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local wait = redis.call('PTTL', KEYS[2])
        if wait > 0 then return wait end
        local n = redis.call('INCR', KEYS[1])
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        local free = tonumber(ARGV[1])
        if n >= free then
            local lock = math.min(1000 * 2 ^ (n - free), tonumber(ARGV[3]))
            redis.call('SET', KEYS[2], 1, 'PX', math.floor(lock))
        end
        return 0
        ",
    )
});

/// How long a lock lasts after `failures` failures in a row.
fn lock_for(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?;
    let lock = Duration::from_secs(1u64.checked_shl(over).unwrap_or(u64::MAX));
    Some(lock.min(MAX_LOCK))
}

impl LoginThrottle {
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            local: Arc::default(),
        }
    }

    fn key(account: &AccountKey) -> String {
        hex::encode(Sha256::digest(account.0.as_bytes()))
    }

    /// Reserves a login attempt for `account`, or says how long it must wait. Every attempt
    /// counts as a failure until it succeeds ([`Self::succeeded`] clears the count), and the
    /// check and the count are one atomic step: parallel attempts cannot all slip in before
    /// the lock (at most `FREE_FAILURES` per window, then one per lock).
    pub async fn begin(&self, account: &AccountKey) -> Option<Duration> {
        let key = Self::key(account);
        let mut redis = self.cache.connection();
        let reserved: redis::RedisResult<i64> = BEGIN_ATTEMPT
            .key(self.cache.key(&format!("login-failures:{key}")))
            .key(self.cache.key(&format!("login-lock:{key}")))
            .arg(FREE_FAILURES)
            .arg(millis(WINDOW))
            .arg(millis(MAX_LOCK))
            .invoke_async(&mut redis)
            .await;
        match reserved {
            Ok(wait_ms) => u64::try_from(wait_ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            Err(error) => {
                tracing::warn!(error = %error, "Redis unavailable: login throttling is per process");
                self.begin_locally(key)
            }
        }
    }

    fn begin_locally(&self, key: String) -> Option<Duration> {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.len() >= LOCAL_CAPACITY {
            local.retain(|_, entry| entry.window_ends > now);
            if local.len() >= LOCAL_CAPACITY {
                local.clear();
            }
        }
        let entry = local.entry(key).or_insert(Local {
            failures: 0,
            window_ends: now,
            locked_until: now,
        });
        if let Some(wait) = entry
            .locked_until
            .checked_duration_since(now)
            .filter(|w| !w.is_zero())
        {
            return Some(wait);
        }
        if entry.window_ends <= now {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.window_ends = now + WINDOW;
        if let Some(lock) = lock_for(entry.failures) {
            entry.locked_until = now + lock;
        }
        None
    }

    /// Forgets the failures of `account` after a successful login.
    pub async fn succeeded(&self, account: &AccountKey) {
        let key = Self::key(account);
        self.local.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let mut redis = self.cache.connection();
        let cleared: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.cache.key(&format!("login-failures:{key}")))
            .arg(self.cache.key(&format!("login-lock:{key}")))
            .query_async(&mut redis)
            .await;
        if let Err(error) = cleared {
            tracing::warn!(error = %error, "Redis unavailable: could not clear a login throttle");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_after_the_free_failures_and_are_capped() {
        assert_eq!(lock_for(0), None);
        assert_eq!(lock_for(FREE_FAILURES - 1), None);
        assert_eq!(lock_for(FREE_FAILURES), Some(Duration::from_secs(1)));
        assert_eq!(lock_for(FREE_FAILURES + 3), Some(Duration::from_secs(8)));
        assert_eq!(lock_for(FREE_FAILURES + 30), Some(MAX_LOCK));
        assert_eq!(lock_for(u32::MAX), Some(MAX_LOCK));
    }
}

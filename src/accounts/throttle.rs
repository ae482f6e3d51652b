//! Login backoff, keyed by the submitted email whether or not an account has it, so the
//! answer never tells whether one exists, and by the client's address, so an attacker cannot
//! lock the owner out by failing on purpose.
//!
//! Two counts, checked and bumped in one atomic step:
//! - per account and client address: after `FREE_FAILURES` failed attempts within `WINDOW`,
//!   each further one locks that pair for twice as long as the one before (1 s, 2 s, 4 s …
//!   up to `MAX_LOCK`), so a guesser is slowed while the owner, elsewhere, still gets in;
//! - per account from every address together, looser (`ACCOUNT_FREE_FAILURES`): a guesser
//!   with many addresses meets it and then locks the account for everyone, doubling likewise.
//!
//! An attempt is counted before its password is checked (see [`LoginThrottle::begin`]); a
//! success clears its pair and takes itself off the account's count. State lives in Redis
//! (shared by every instance); while Redis is down, each process keeps its own counts, so
//! logins keep working and stay throttled.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use crate::{cache::Cache, domain::EmailAddress};

const FREE_FAILURES: u32 = 5;
const ACCOUNT_FREE_FAILURES: u32 = 50;
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Counts the in-process fallback remembers at most.
const LOCAL_CAPACITY: usize = 10_000;

/// What a login attempt is counted against: the account when the address names one (so every
/// spelling of an address shares one count, whatever case folding the database applies),
/// else the address as typed, lower-cased.
pub struct AccountKey(String);

impl AccountKey {
    pub fn new(email: &EmailAddress, account: Option<uuid::Uuid>) -> Self {
        match account {
            Some(id) => Self::user(id),
            None => Self(format!("email:{}", email.normalized())),
        }
    }

    pub fn user(id: uuid::Uuid) -> Self {
        Self(format!("user:{id}"))
    }
}

/// The Redis keys (hashed: no address or email in them) of one attempt's two counts.
struct Keys {
    pair: String,
    account: String,
}

impl Keys {
    fn new(account: &AccountKey, client: IpAddr) -> Self {
        let hash = |text: &str| hex::encode(Sha256::digest(text.as_bytes()));
        Self {
            pair: hash(&format!("{}|{client}", account.0)),
            account: hash(&account.0),
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

/// Atomically: the longer remaining lock in milliseconds if the pair (KEYS 1, 2) or the
/// account (KEYS 3, 4) is locked; else count this attempt in both and, from the free-th on,
/// lock for 2^(n − free) s (at most `max_lock`) so that the attempts after it wait. Returns 0
/// when the attempt may go ahead.
static BEGIN_ATTEMPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local wait = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[4]))
        if wait > 0 then return wait end
        local function count(failures, lock, free)
            local n = redis.call('INCR', failures)
            redis.call('PEXPIRE', failures, ARGV[3])
            if n >= free then
                local ms = math.min(1000 * 2 ^ (n - free), tonumber(ARGV[4]))
                redis.call('SET', lock, 1, 'PX', math.floor(ms))
            end
        end
        count(KEYS[1], KEYS[2], tonumber(ARGV[1]))
        count(KEYS[3], KEYS[4], tonumber(ARGV[2]))
        return 0
        ",
    )
});

/// A success: its pair starts again, and it no longer counts against the account.
static SUCCEEDED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('DEL', KEYS[1], KEYS[2])
        if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
        ",
    )
});

/// How long a lock lasts after `failures` failures in a row, `free` of them without one.
fn lock_for(failures: u32, free: u32) -> Option<Duration> {
    let over = failures.checked_sub(free)?;
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

    fn redis_keys(&self, keys: &Keys) -> [String; 4] {
        [
            self.cache.key(&format!("login-failures:{}", keys.pair)),
            self.cache.key(&format!("login-lock:{}", keys.pair)),
            self.cache.key(&format!("login-failures:{}", keys.account)),
            self.cache.key(&format!("login-lock:{}", keys.account)),
        ]
    }

    /// Reserves a login attempt for `account` from `client` (the client's rate-limit bucket:
    /// its IPv4 address or IPv6 /64), or says how long it must wait.
    /// Every attempt counts as a failure until it succeeds ([`Self::succeeded`]), and the
    /// check and the count are one atomic step: parallel attempts cannot all slip in before
    /// the lock (at most `FREE_FAILURES` per window and address, then one per lock).
    pub async fn begin(&self, account: &AccountKey, client: IpAddr) -> Option<Duration> {
        let keys = Keys::new(account, client);
        let mut script = BEGIN_ATTEMPT.prepare_invoke();
        for key in self.redis_keys(&keys) {
            script.key(key);
        }
        let reserved: redis::RedisResult<i64> = script
            .arg(FREE_FAILURES)
            .arg(ACCOUNT_FREE_FAILURES)
            .arg(millis(WINDOW))
            .arg(millis(MAX_LOCK))
            .invoke_async(&mut self.cache.connection())
            .await;
        match reserved {
            Ok(wait_ms) => {
                self.cache.limits_shared();
                u64::try_from(wait_ms)
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
            }
            Err(error) => {
                self.cache.limits_local(&error);
                self.begin_locally(keys)
            }
        }
    }

    fn begin_locally(&self, keys: Keys) -> Option<Duration> {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.len() >= LOCAL_CAPACITY {
            local.retain(|_, entry| entry.window_ends > now);
            if local.len() >= LOCAL_CAPACITY {
                local.clear();
            }
        }
        let wait = [&keys.pair, &keys.account]
            .into_iter()
            .filter_map(|key| local.get(key))
            .filter_map(|entry| entry.locked_until.checked_duration_since(now))
            .max()
            .filter(|wait| !wait.is_zero());
        if wait.is_some() {
            return wait;
        }
        for (key, free) in [(keys.pair, FREE_FAILURES), (keys.account, ACCOUNT_FREE_FAILURES)] {
            let entry = local.entry(key).or_insert(Local {
                failures: 0,
                window_ends: now,
                locked_until: now,
            });
            if entry.window_ends <= now {
                entry.failures = 0;
            }
            entry.failures += 1;
            entry.window_ends = now + WINDOW;
            if let Some(lock) = lock_for(entry.failures, free) {
                entry.locked_until = now + lock;
            }
        }
        None
    }

    /// A successful login of `account` from `client`.
    pub async fn succeeded(&self, account: &AccountKey, client: IpAddr) {
        let keys = Keys::new(account, client);
        {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            local.remove(&keys.pair);
            if let Some(entry) = local.get_mut(&keys.account) {
                entry.failures = entry.failures.saturating_sub(1);
            }
        }
        let mut script = SUCCEEDED.prepare_invoke();
        for key in &self.redis_keys(&keys)[..3] {
            script.key(key);
        }
        let cleared: redis::RedisResult<()> = script.invoke_async(&mut self.cache.connection()).await;
        if let Err(error) = cleared {
            self.cache.limits_local(&error);
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
        assert_eq!(lock_for(0, FREE_FAILURES), None);
        assert_eq!(lock_for(FREE_FAILURES - 1, FREE_FAILURES), None);
        assert_eq!(
            lock_for(FREE_FAILURES, FREE_FAILURES),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            lock_for(FREE_FAILURES + 3, FREE_FAILURES),
            Some(Duration::from_secs(8))
        );
        assert_eq!(lock_for(FREE_FAILURES + 30, FREE_FAILURES), Some(MAX_LOCK));
        assert_eq!(lock_for(u32::MAX, ACCOUNT_FREE_FAILURES), Some(MAX_LOCK));
    }
}

//! The Redis connection, shared by everything that needs short-lived shared state.
//!
//! The connection is made lazily and re-made after failures, so keel starts and serves while
//! Redis is down; `/health` reports it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret as _;

use crate::config::Config;

/// Connect and response timeouts: Redis answering slower than this is treated as down.
const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Cache {
    connection: ConnectionManager,
    prefix: Arc<str>,
    /// Set while the limits kept in Redis (login backoff, the auth forms' budget) count in this
    /// process instead, because Redis failed their last command. `/health` warns meanwhile.
    limits_local: Arc<AtomicBool>,
}

impl Cache {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis_url.expose_secret())
            .context("REDIS_URL is not a valid Redis URL")?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(TIMEOUT);
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .context("setting up the Redis connection")?;
        Ok(Self {
            connection,
            prefix: config.redis_key_prefix.as_str().into(),
            limits_local: Arc::default(),
        })
    }

    /// The full key for `name` under this app's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A handle on the shared connection, for commands of a feature's own.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// A limit could not reach Redis and counts in this process: logged once, until
    /// [`Self::limits_shared`].
    pub fn limits_local(&self, error: &redis::RedisError) {
        if !self.limits_local.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis unavailable: the auth limits are counted per instance until it answers");
        }
    }

    /// A limit reached Redis: every instance shares its counts again.
    pub fn limits_shared(&self) {
        if self.limits_local.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: the auth limits are shared by every instance");
        }
    }

    pub fn limits_are_local(&self) -> bool {
        self.limits_local.load(Ordering::Relaxed)
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
    }
}

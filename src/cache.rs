//! The Redis connection, shared by everything that needs short-lived shared state.
//!
//! The connection is made lazily and re-made after failures, so keel starts and serves while
//! Redis is down; `/health` reports it.

use std::{sync::Arc, time::Duration};

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

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
    }
}

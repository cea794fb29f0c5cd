//! State store implementations behind `gse_core::seams::StateStore`.
//!
//! [`embedded::EmbeddedStore`] is the single-node default: agents in
//! memory, with agent identities, apps, task records, file transfers, data
//! routes, identity pins and raised `agent_lost` alarms persisted to SQLite
//! so that they survive a restart (one module per concern).
//! [`redis::RedisStore`] keeps the same in Redis, shared by the nodes of a
//! cluster (`[store] redis`). Nothing outside this module and `node` knows
//! which one is in use.

pub mod config;
pub mod embedded;
pub mod redis;

pub use embedded::EmbeddedStore;
pub(crate) use redis::sentinel_addr as redis_sentinel_addr;
pub use redis::{RedisDirectory, RedisStore, RedisStoreConfig, SentinelConfig};

use std::sync::Arc;

use gse_core::seams::{AgentDirectory, MemoryDirectory, StateStore};

use crate::config::ServerConfig;
use crate::role::data::snapshot::SharedSnapshots;

/// Why the configured store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Embedded(#[from] embedded::OpenError),
    #[error(transparent)]
    Redis(#[from] redis::ConnectError),
}

/// Opens the store `[store]` selects: Redis when `redis` is set, else the
/// embedded store. An unreachable Redis fails here, naming its address.
pub async fn open(config: &ServerConfig) -> Result<Arc<dyn StateStore>, OpenError> {
    Ok(open_with_directory(config).await?.store)
}

/// What a node opens from `[store]`: the store, the agent directory that
/// goes with it, and (Redis) where the nodes share system snapshots.
pub struct Opened {
    pub store: Arc<dyn StateStore>,
    pub directory: Arc<dyn AgentDirectory>,
    pub snapshots: Option<Arc<dyn SharedSnapshots>>,
}

/// Like [`open`], with the agent directory that goes with the store: the
/// cluster's, in Redis, or this node's memory for the embedded store.
pub async fn open_with_directory(config: &ServerConfig) -> Result<Opened, OpenError> {
    Ok(match config.store.redis() {
        Some(redis) => {
            let store = Arc::new(RedisStore::connect(&redis).await?);
            Opened {
                directory: Arc::new(store.directory()),
                snapshots: Some(store.clone()),
                store,
            }
        }
        None => {
            let path = config.store_path();
            let opened = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
                .await
                .expect("opening the embedded store does not panic")?;
            Opened {
                store: Arc::new(opened),
                directory: Arc::new(MemoryDirectory::default()),
                snapshots: None,
            }
        }
    })
}

/// Where the configured store is, for messages: the SQLite file, or the
/// Redis address (without credentials).
pub fn location(config: &ServerConfig) -> String {
    match config.store.redis() {
        Some(crate::store::RedisStoreConfig {
            sentinel: Some(sentinel),
            ..
        }) => format!(
            "the Redis master `{}` through the sentinels {}",
            sentinel.master_name,
            sentinel.addrs.join(", ")
        ),
        Some(redis) => match ::redis::Client::open(redis.url.as_str()) {
            Ok(c) => format!("the Redis store at {}", c.get_connection_info().addr()),
            Err(_) => "the Redis store".into(),
        },
        None => config.store_path().display().to_string(),
    }
}

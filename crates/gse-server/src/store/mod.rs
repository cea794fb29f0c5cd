//! State store implementations behind `gse_core::seams::StateStore`.
//!
//! [`embedded::EmbeddedStore`] is the single-node default: agents in
//! memory, with agent identities, apps, task records, file transfers, data
//! routes, identity pins and raised `agent_lost` alarms persisted to SQLite
//! so that they survive a restart (one module per concern).
//! [`redis::RedisStore`] keeps the same in Redis, shared by the nodes of a
//! cluster (`[store] redis`). Nothing outside this module and `node` knows
//! which one is in use.

pub mod embedded;
pub mod redis;

pub use embedded::EmbeddedStore;
pub use redis::{RedisStore, RedisStoreConfig};

//! The Redis state store: every concern of `StateStore` in one Redis
//! (standalone, or the master a URL names), shared by the nodes of a
//! cluster (`[store] redis = "redis://[user:password@]host:port[/db]"`).
//!
//! One [`ConnectionManager`] (a multiplexed connection that reconnects by
//! itself) carries every call, through [`conn::StoreConn`], which with
//! Sentinel (`redis_sentinels` + `redis_master_name`) finds the master
//! through the sentinels at start and again when it fails or moves; each connection attempt and each answer has
//! a timeout ([`CONNECT_TIMEOUT`], [`RESPONSE_TIMEOUT`]), so while Redis is
//! down a call fails within seconds with [`StoreErrorKind::Unavailable`]
//! instead of hanging. Writes that must be seen whole (a task batch, a
//! transfer batch) go in one MULTI/EXEC; check-and-set steps (heartbeats
//! on known agents only, offline marks fenced by the connection, pins,
//! route ids, alarm clears) are Lua scripts (EVAL), atomic on the server.
//! Heartbeats are batched: one script call per [`HEARTBEATS_PER_CALL`]
//! beats, every call of a batch in one pipeline.
//!
//! Scripts compute some key names from the prefix, so the store needs one
//! Redis (or a Sentinel-managed master), not Redis Cluster.
//!
//! # Key layout
//!
//! Every key starts with the configured prefix `P` (default `gse:`).
//! `K` is an agent key `cloud:ip`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P agent:K` | hash | `rec` (the record as registered, JSON), `id`, `node`, `conn_at`, `alive` (`1`/`0`), `seen`, `cpu`, `mem`, `memp` (heartbeats change only the last four) |
//! | `P agents` | set | every `K` |
//! | `P agent_id:ID` | string | the `K` agent id `ID` resolves to |
//! | `P agent_of:K` | string | the agent id of `K` (its hash's `id`), for one-`MGET` look-ups |
//! | `P node_agents:N` | set | the `K`s registered last on node `N` |
//! | `P app:CODE` | string | the app's salted secret hash |
//! | `P task:ID` | string | the task record (JSON), written once |
//! | `P task:ID:entries` | hash | `target:atomic` → entry state (JSON) |
//! | `P task:ID:log:T:A` | string | the log of entry (T, A); chunks written at their byte offset (SETRANGE) |
//! | `P tasks:by_created` | sorted set | task ids by creation time (ms) |
//! | `P tasks:node:N` | set | ids of the tasks node `N` created |
//! | `P transfer:ID` | string | the file transfer (JSON), saved whole |
//! | `P transfers:by_created` | sorted set | transfer ids by creation time (ms) |
//! | `P transfers:node:N` | set | ids of the transfers node `N` started |
//! | `P stream_tos`, `P channels` | hash | id → `{plat_name, spec}` (JSON) |
//! | `P pin:K` | hash | `agent_id`, `pinned_ms`, `by_cert` |
//! | `P pin_id:ID` | string | the `K` agent id `ID` is pinned to |
//! | `P pins` | set | every pinned `K` |
//! | `P lost` | hash | `K` → `{node_id, raised_ms}` (JSON) |
//! | `P snap:K` | list | the agent's system snapshots, newest first, `{at, s}` (JSON); trimmed to `data.snapshot.max_per_agent`, expiring a window after the last |
//!
//! The agent directory ([`RedisDirectory`], [`RedisStore::directory`])
//! shares the connection and prefix; its keys are in [`directory`].

mod agents;
mod conn;
mod directory;
mod lost;
mod pins;
mod routes;
mod snapshots;
mod tasks;
mod transfers;

use std::time::Duration;

pub use conn::StoreConn;
pub(crate) use conn::sentinel_addr;
pub use directory::RedisDirectory;

use gse_core::seams::{StoreError, StoreErrorKind, StoreKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

const BACKEND: &str = "redis";

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis may take to answer one call (or one pipeline).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats applied by one script call.
pub const HEARTBEATS_PER_CALL: usize = 500;

/// Where the store is and under which prefix.
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]`. With [`Self::sentinel`]
    /// only its user, password and db are used (the sentinels name the
    /// master's address).
    pub url: String,
    /// Prefix of every key; clusters sharing a Redis use different ones.
    pub key_prefix: String,
    /// Find the master through these sentinels instead of `url`'s address.
    pub sentinel: Option<SentinelConfig>,
}

impl RedisStoreConfig {
    /// The Redis at `url` (no Sentinel).
    pub fn at(url: impl Into<String>, key_prefix: impl Into<String>) -> RedisStoreConfig {
        RedisStoreConfig {
            url: url.into(),
            key_prefix: key_prefix.into(),
            sentinel: None,
        }
    }
}

/// Redis Sentinel: which sentinels to ask for which master.
#[derive(Clone, Debug)]
pub struct SentinelConfig {
    /// `host:port` of each sentinel, asked in this order.
    pub addrs: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf).
    pub password: Option<String>,
}

/// Why the Redis store could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the [store] redis URL is not valid: {0}")]
    Url(RedisError),
    #[error(
        "cannot reach the Redis state store at {addr}: {source}; check that redis-server runs there and that [store] redis names it (with the right password)"
    )]
    Unreachable { addr: String, source: RedisError },
    #[error(
        "cannot find the Redis master {describe}: {reason}; check that redis-sentinel runs there and monitors that master ([store] redis_sentinels, redis_master_name) and that the master answers (with the password in [store] redis)"
    )]
    Sentinel { describe: String, reason: String },
}

/// The Redis state store; see the module doc.
pub struct RedisStore {
    conn: StoreConn,
    prefix: String,
}

impl RedisStore {
    /// Connects (failing within seconds when Redis, or with Sentinel the
    /// sentinels or the master they name, cannot be reached or refuse the
    /// credentials) and checks it answers.
    pub async fn connect(config: &RedisStoreConfig) -> Result<RedisStore, ConnectError> {
        Ok(RedisStore {
            conn: StoreConn::connect(config).await?,
            prefix: config.key_prefix.clone(),
        })
    }

    /// `host:port` of the Redis in use (the current master, with Sentinel).
    pub fn addr(&self) -> String {
        self.conn.addr()
    }

    /// A handle for one call (clones share the connection).
    fn conn(&self) -> StoreConn {
        self.conn.clone()
    }

    /// `prefix` + `rest`.
    fn key(&self, rest: impl std::fmt::Display) -> String {
        format!("{}{rest}", self.prefix)
    }
}

impl StoreKind for RedisStore {
    fn kind(&self) -> &'static str {
        BACKEND
    }
}

/// What kind of failure a Redis error is: anything about reaching Redis
/// (refused, dropped, timed out, still loading its data, a read-only
/// replica, refused credentials) may pass once Redis is back; an answer
/// we cannot read is corrupt data; the rest is our bug.
fn error_kind(e: &RedisError) -> StoreErrorKind {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreErrorKind::Unavailable;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => {
            StoreErrorKind::Unavailable
        }
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoPerm,
        ) => StoreErrorKind::Unavailable,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreErrorKind::Corrupt,
        ErrorKind::InvalidClientConfig => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Internal,
    }
}

/// The [`StoreError`] of a Redis error met while `doing`.
fn store_error(doing: &'static str) -> impl Fn(RedisError) -> StoreError {
    move |e| StoreError::new(error_kind(&e), BACKEND, doing, e.to_string())
}

/// A stored JSON document that does not parse: corrupt data.
fn decode<T: serde::de::DeserializeOwned>(
    doing: &'static str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(BACKEND, doing, e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store records always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_about_reaching_redis_are_retryable_and_bad_answers_corrupt() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(error_kind(&io), StoreErrorKind::Unavailable);
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert_eq!(error_kind(&auth), StoreErrorKind::Unavailable);
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(error_kind(&parse), StoreErrorKind::Corrupt);
        let client = RedisError::from((ErrorKind::Client, "bug"));
        assert_eq!(error_kind(&client), StoreErrorKind::Internal);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_one_quick_error_naming_the_address() {
        // A port nobody listens on: bind, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let err = RedisStore::connect(&RedisStoreConfig::at(
            format!("redis://:secret@127.0.0.1:{port}/"),
            "gse:",
        ))
        .await
        .err()
        .expect("nothing listens there");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(!msg.contains("secret"), "the password stays out: {msg}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

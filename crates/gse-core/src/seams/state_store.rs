//! `StateStore`: what the cluster knows about agents and apps (C12).
//!
//! Heartbeats are the hot path (one every few seconds from every agent), so
//! they arrive in batches ([`StateStore::record_heartbeats`]); identity and
//! connect/disconnect changes are single writes. The embedded store (in
//! gse-server) keeps everything in memory and persists identities and apps
//! to SQLite; the Redis store (cluster issue) shares them between nodes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::identity::{AgentKey, AgentRef};

/// Everything known about one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub key: AgentKey,
    pub agent_id: String,
    pub version: String,
    pub hostname: String,
    pub os_type: String,
    /// 1 = agent, 0 = proxy.
    pub run_mode: u32,
    pub zone: String,
    /// Agent process start, unix seconds.
    pub start_time_s: u64,
    /// The node holding the connection, and the address it reports as the
    /// agent's parent (A1 `parent_ip`/`parent_port`).
    pub node_id: String,
    pub parent_ip: String,
    pub parent_port: u16,
    /// Socket address the node sees; differs from `key.ip` behind NAT (K7).
    pub peer_addr: String,
    pub alive: bool,
    pub connected_at_ms: u64,
    /// When the last heartbeat (or registration) arrived, node clock.
    pub last_seen_ms: u64,
    pub cpu_percent: f32,
    pub mem_bytes: u64,
    pub mem_percent: f32,
}

/// One heartbeat's worth of change to an agent record.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatUpdate {
    pub key: AgentKey,
    pub at_ms: u64,
    pub cpu_percent: f32,
    pub mem_bytes: u64,
    pub mem_percent: f32,
}

/// An upper system allowed to call the API (A3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_code: String,
    pub app_secret: String,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {backend} failed while {doing}: {message}")]
    Backend {
        backend: &'static str,
        doing: &'static str,
        message: String,
    },
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Short name for logs and metrics ("embedded", "redis").
    fn kind(&self) -> &'static str;

    /// Records a (re)registered agent, replacing what was known under its key.
    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError>;
    /// Applies a batch of heartbeats; unknown keys are ignored.
    async fn record_heartbeats(&self, beats: &[HeartbeatUpdate]) -> Result<(), StoreError>;
    /// Marks an agent offline, if `node_id` still holds it (a newer
    /// connection on another node must not be overwritten). `last_seen_ms`
    /// keeps the time of its last heartbeat.
    async fn mark_offline(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError>;
    /// Looks agents up by either name; `None` for unknown ones, same order.
    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError>;
    /// Every known agent.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError>;
    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError>;
}

//! Agents and apps: what the cluster knows about each agent (registration,
//! heartbeats, who holds it) and the upper systems allowed to call the API.
//!
//! Heartbeats are the hot path (one every few seconds from every agent), so
//! they arrive in batches ([`AgentStore::record_heartbeats`]); identity and
//! connect/disconnect changes are single writes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::app_secret::SecretHash;
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
    /// Where the agent serves file pieces to its peers (F1, F8), `ip:port`;
    /// empty when it does not. Nodes read it for agents other nodes hold.
    #[serde(default)]
    pub p2p_addr: String,
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

/// An upper system allowed to call the API (A3). The store keeps only a
/// salted hash of its secret ([`crate::app_secret`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_code: String,
    pub secret_hash: SecretHash,
}

impl AppRecord {
    /// A record for `app_code` whose secret is `secret` (hashed here; slow
    /// on purpose, call it off the async threads).
    pub fn with_secret(app_code: impl Into<String>, secret: &str) -> Self {
        AppRecord {
            app_code: app_code.into(),
            secret_hash: SecretHash::hash(secret),
        }
    }
}

/// An agent's two names, as the store knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownAgent {
    pub key: AgentKey,
    pub agent_id: String,
}

impl From<&AgentRecord> for KnownAgent {
    fn from(r: &AgentRecord) -> KnownAgent {
        KnownAgent {
            key: r.key,
            agent_id: r.agent_id.clone(),
        }
    }
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Records a (re)registered agent, replacing what was known under its
    /// key; its agent id resolves to this key from now on.
    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError>;
    /// Applies a batch of heartbeats; unknown keys are ignored.
    async fn record_heartbeats(&self, beats: &[HeartbeatUpdate]) -> Result<(), StoreError>;
    /// Marks an agent offline, if the stored record is still the connection
    /// that ended: held by `node_id` and registered at `connected_at_ms`
    /// (a newer connection, on this node or another, must not be
    /// overwritten by the old one's late disconnect). `last_seen_ms` keeps
    /// the time of its last heartbeat.
    async fn mark_offline(
        &self,
        key: AgentKey,
        node_id: &str,
        connected_at_ms: u64,
    ) -> Result<(), StoreError>;
    /// Marks offline every agent `node_id` holds (the node died, or it is
    /// starting again and none of its old connections survived); returns
    /// their keys, sorted. Agents that re-registered on another node since
    /// are held by that node and stay as they are.
    async fn mark_node_offline(&self, node_id: &str) -> Result<Vec<AgentKey>, StoreError>;
    /// Looks agents up by either name; `None` for unknown ones, same order.
    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError>;
    /// What [`AgentStore::get_agents`] would find, names only: a task
    /// needs no more of its targets, and a shared store answers this
    /// without reading and decoding whole records (one round trip for
    /// 10,000 targets instead of two and 10,000 JSON documents).
    async fn identify_agents(
        &self,
        refs: &[AgentRef],
    ) -> Result<Vec<Option<KnownAgent>>, StoreError>;
    /// Every known agent.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
}

#[async_trait]
pub trait AppStore: Send + Sync {
    /// The app registered as `app_code`, read afresh (a secret changed by
    /// `gse-server apps add` must take effect at once).
    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError>;
    /// Registers an app, replacing its secret if it exists.
    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError>;
}

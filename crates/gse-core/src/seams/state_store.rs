//! `StateStore`: what the cluster knows about agents, apps and tasks (C12).
//!
//! Heartbeats are the hot path (one every few seconds from every agent), so
//! they arrive in batches ([`StateStore::record_heartbeats`]); identity and
//! connect/disconnect changes are single writes. Task records are written in
//! batches too ([`StateStore::write_tasks`]): the task role keeps live tasks
//! in memory and flushes what changed every few hundred milliseconds, so a
//! store never sees one write per agent frame. The embedded store (in
//! gse-server) keeps agents in memory and persists identities, apps and
//! tasks to SQLite; the Redis store (cluster issue) shares them between nodes.
//! File transfers ([`FileTransferRecord`]) are saved whole, one record per
//! transfer, at most every few hundred milliseconds while they change.
//! Data routes (D5) are [`StreamToRecord`]s and [`ChannelRecord`]s: an id,
//! a platform and the data role's own JSON document; new ids are picked by
//! the store ([`NewId`]) so that concurrent adds never share one.
//! Identity pins ([`IdentityPin`], issue 9) bind a `cloud_id:ip` and the
//! first agent id that claimed it to each other, until an operator
//! releases the pin.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

/// An identity and the agent id that first claimed it, bound to each other
/// (issue 9): another agent id claiming the identity, or the agent id
/// claimed under another identity, is refused until an operator releases
/// the pin (`gse-server agents release-pin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPin {
    pub key: AgentKey,
    pub agent_id: String,
    /// When the pin was made, unix ms.
    pub pinned_ms: u64,
    /// Made by a per-agent certificate naming this identity: then only such
    /// a certificate may claim it, whatever agent id comes with a shared one.
    pub by_certificate: bool,
}

/// The pin in force after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinClaim {
    pub pin: IdentityPin,
    /// Whether this claim made it (the identity was free).
    pub made: bool,
}

/// An `agent_lost` alarm (K4) a node raised and has not cleared yet: kept
/// so that after a restart the node neither raises it again nor forgets to
/// clear it when the agent comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostAlarm {
    pub key: AgentKey,
    /// The node that raised it.
    pub node_id: String,
    /// When it was raised, unix ms.
    pub raised_ms: u64,
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

/// One target of a task, as the caller named it, with what it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTarget {
    /// `bk_agent_id` exactly as the caller sent it.
    pub bk_agent_id: String,
    /// `bk_container_id` as sent; empty for the host itself.
    pub bk_container_id: String,
    /// `cloud:ip` of the agent it resolved to; empty if unknown.
    pub agent_key: String,
    /// Real agent id it resolved to; empty if unknown.
    pub agent_id: String,
}

/// A script task as created: who it targets, never changed afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// The node that created the task and owns its live state.
    pub node_id: String,
    pub created_ms: u64,
    /// The caller's label, returned as every entry's `tag`.
    pub tag: String,
    /// Atomic tasks per target (ids 0..atomic_count).
    pub atomic_count: u32,
    /// Entry `target` numbers index this list.
    pub targets: Vec<TaskTarget>,
}

/// The state of one (target, atomic task) entry, without its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntryState {
    pub task_id: String,
    /// Index into [`TaskRecord::targets`].
    pub target: u32,
    pub atomic_id: u32,
    /// `gse_core::task::STATUS_*`.
    pub status: i32,
    /// `gse_core::task::ERR_*`.
    pub error_code: i32,
    pub error_msg: String,
    pub exit_code: i32,
    /// Unix ms; 0 = not yet.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Bytes appended to an entry's log, starting at byte `offset` of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLogChunk {
    pub task_id: String,
    pub target: u32,
    pub atomic_id: u32,
    pub offset: u64,
    pub data: String,
}

/// One batch of task changes, applied atomically and in this order: new
/// records, entry states (each replaces the stored state of its entry), log
/// chunks. Every part is idempotent, so a failed batch can be sent again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskWrites {
    pub tasks: Vec<TaskRecord>,
    pub entries: Vec<TaskEntryState>,
    pub logs: Vec<TaskLogChunk>,
}

impl TaskWrites {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.entries.is_empty() && self.logs.is_empty()
    }
}

/// A stored task: its record and the state of every entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTask {
    pub record: TaskRecord,
    pub entries: Vec<TaskEntryState>,
}

/// Which part of an entry's log to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogWindow {
    pub target: u32,
    pub atomic_id: u32,
    /// First byte to return.
    pub offset: u64,
    /// Most bytes to return.
    pub max_bytes: u64,
}

/// How unfinished entries are closed when their node restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryFailure {
    pub status: i32,
    pub error_code: i32,
    pub error_msg: String,
    pub end_ms: u64,
}

/// One entry of a file transfer, as `get_transfer_file_result` reports it
/// (COMPAT.md §2.1): the upload of one task (mode 0) or one target's
/// download of it (mode 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileEntryRecord {
    /// 0 = upload (the source's side), 1 = download (one target's side).
    pub mode: u8,
    /// Index of the API's `tasks[]` this entry belongs to.
    pub task_index: u32,
    /// The source as the caller named it, and the directory and name it gave.
    pub source_agent_id: String,
    pub source_container_id: String,
    pub source_file_dir: String,
    pub source_file_name: String,
    /// The target as the caller named it (empty for uploads).
    pub dest_agent_id: String,
    pub dest_container_id: String,
    pub dest_file_dir: String,
    pub dest_file_name: String,
    /// The entry's agent (source for uploads, target for downloads) under
    /// its other names: `cloud:ip` and real agent id; empty when unknown.
    pub agent_key: String,
    pub agent_real_id: String,
    /// 0-100.
    pub progress: u32,
    /// KB/s.
    pub speed_kbps: u64,
    /// Bytes of the task's files.
    pub size: u64,
    /// 0 waiting, 1 running, 2 success, 3 timeout, 4 terminated, 5 failed.
    pub status: i32,
    pub status_info: String,
    /// 115 while running, 0 done, else why it failed (docs/API.md).
    pub error_code: i32,
    pub error_msg: String,
    /// Unix ms; 0 = not yet.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Downloads: how the bytes came (peers, or direct through the node).
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
    /// Downloads: why pieces meant for peers went direct through the node
    /// (F3), as the target reported it; empty when none did.
    pub p2p_fallback: String,
}

impl FileEntryRecord {
    /// Whether nothing more will change: any code but 115 (running) is final.
    pub fn is_final(&self) -> bool {
        self.error_code != crate::task::ERR_RUNNING
    }
}

/// A file transfer (the API's task id) with every entry's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileTransferRecord {
    pub task_id: String,
    /// The node that started the transfer and owns its live state.
    pub node_id: String,
    pub created_ms: u64,
    /// In answer order: per task, its upload, then its downloads.
    pub entries: Vec<FileEntryRecord>,
}

impl FileTransferRecord {
    /// Whether every entry is final.
    pub fn is_finished(&self) -> bool {
        self.entries.iter().all(FileEntryRecord::is_final)
    }
}

/// A data receiver (`stream_to`, D5) as stored: its id and platform, and the
/// data role's own JSON document (the store never reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamToRecord {
    pub stream_to_id: u32,
    pub plat_name: String,
    /// JSON owned by the data role (`role::data::routes` in gse-server).
    pub spec: String,
}

/// A data channel (one data id and its routes, D5) as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The data id.
    pub channel_id: u32,
    pub plat_name: String,
    /// JSON owned by the data role (`role::data::routes` in gse-server).
    pub spec: String,
}

/// Which id a new record gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewId {
    /// Exactly this one; refused if it is taken.
    Given(u32),
    /// One more than the largest id in `first..=last` (or `first`); once
    /// `last` is taken, the lowest free id of the range; refused when the
    /// range is full.
    Next { first: u32, last: u32 },
}

/// The error of a data-route method a store does not implement.
fn no_data_routes(backend: &'static str, doing: &'static str) -> StoreError {
    StoreError::Backend {
        backend,
        doing,
        message: "this state store does not keep data routes; use the embedded store".into(),
    }
}

/// The error of an identity-pin method a store does not implement.
fn no_identity_pins(backend: &'static str, doing: &'static str) -> StoreError {
    StoreError::Backend {
        backend,
        doing,
        message: "this state store does not keep identity pins; use the embedded store".into(),
    }
}

/// The error of a lost-alarm method a store does not implement.
fn no_lost_alarms(backend: &'static str, doing: &'static str) -> StoreError {
    StoreError::Backend {
        backend,
        doing,
        message: "this state store does not keep raised alarms; use the embedded store".into(),
    }
}

/// The error of a file-transfer method a store does not implement.
fn no_file_transfers(backend: &'static str, doing: &'static str) -> StoreError {
    StoreError::Backend {
        backend,
        doing,
        message: "this state store does not keep file transfers; use the embedded store".into(),
    }
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Short name for logs and metrics ("embedded", "redis").
    fn kind(&self) -> &'static str;

    /// Records a (re)registered agent, replacing what was known under its key.
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
    /// Looks agents up by either name; `None` for unknown ones, same order.
    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError>;
    /// Every known agent.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError>;
    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError>;

    /// Applies a batch of task changes in one transaction (see
    /// [`TaskWrites`]). Shared, so that a caller can send a failed batch
    /// again without copying it.
    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError>;
    /// A task's record and every entry's state; `None` if unknown (or pruned).
    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError>;
    /// Reads windows of entries' logs, one answer per window in the same
    /// order: the raw bytes from `offset` (fewer when the log is shorter,
    /// empty past its end or for an unknown entry).
    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Closes every entry of `node_id`'s tasks that is not final
    /// (`gse_core::task::is_final`) with `failure`; returns how many.
    /// A node calls it at start, for tasks it held when it stopped.
    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError>;
    /// Deletes tasks created before `created_before_ms`, with their entries
    /// and logs; returns how many tasks.
    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError>;

    /// Saves file transfers in one transaction, each replacing what was
    /// stored under its task id. Idempotent, so a failed batch can be sent
    /// again. A store without file transfers refuses (the default).
    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        let _ = transfers;
        Err(no_file_transfers(self.kind(), "saving file transfers"))
    }
    /// A file transfer with every entry; `None` if unknown (or pruned).
    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError> {
        let _ = task_id;
        Err(no_file_transfers(self.kind(), "reading a file transfer"))
    }
    /// Closes every entry of `node_id`'s transfers that is not final
    /// ([`FileEntryRecord::is_final`]) with `failure` (its message becomes
    /// both `error_msg` and `status_info`); returns how many entries.
    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let _ = (node_id, failure);
        Err(no_file_transfers(
            self.kind(),
            "closing unfinished file transfers",
        ))
    }
    /// Deletes finished transfers created before `created_before_ms`;
    /// returns how many.
    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        let _ = created_before_ms;
        Err(no_file_transfers(self.kind(), "pruning file transfers"))
    }

    /// Stores a new stream_to under the id `id` picks (the record's own
    /// `stream_to_id` is ignored); `None` when that id is taken or the
    /// range is full.
    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        let _ = (record, id);
        Err(no_data_routes(self.kind(), "adding a stream_to"))
    }
    /// Replaces a stored stream_to; `false` if there is none with its id.
    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError> {
        let _ = record;
        Err(no_data_routes(self.kind(), "updating a stream_to"))
    }
    /// Deletes a stream_to; `false` if there was none.
    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError> {
        let _ = stream_to_id;
        Err(no_data_routes(self.kind(), "deleting a stream_to"))
    }
    /// Every stored stream_to, by id.
    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        Err(no_data_routes(self.kind(), "listing stream_tos"))
    }
    /// Stores a new channel under the id `id` picks (the record's own
    /// `channel_id` is ignored); `None` when that id is taken or the range
    /// is full.
    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        let _ = (record, id);
        Err(no_data_routes(self.kind(), "adding a data channel"))
    }
    /// Replaces a stored channel; `false` if there is none with its id.
    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError> {
        let _ = record;
        Err(no_data_routes(self.kind(), "updating a data channel"))
    }
    /// Deletes a channel; `false` if there was none.
    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError> {
        let _ = channel_id;
        Err(no_data_routes(self.kind(), "deleting a data channel"))
    }
    /// Every stored channel, by id.
    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        Err(no_data_routes(self.kind(), "listing data channels"))
    }

    /// Pins `pin.key` and `pin.agent_id` to each other unless either is
    /// pinned already (a pin binds both ways: one agent id per identity,
    /// one identity per agent id), and returns the pin in force afterwards:
    /// `pin` itself when both were free, else the older one (unchanged):
    /// the agent id's pin when it is on another identity, else the
    /// identity's. Two racing claims see one winner. A store without pins
    /// refuses (the default), so registrations fail closed.
    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError> {
        let _ = pin;
        Err(no_identity_pins(self.kind(), "claiming an identity"))
    }
    /// Sets the pin of `pin.key`, replacing the identity's pin and the
    /// agent id's pin on another identity (a per-agent certificate naming
    /// them outranks a pin made with the shared one).
    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError> {
        let _ = pin;
        Err(no_identity_pins(self.kind(), "re-pinning an identity"))
    }
    /// Removes the pin of `key`, freeing the identity and its agent id;
    /// returns it, `None` if there was none.
    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        let _ = key;
        Err(no_identity_pins(self.kind(), "releasing an identity pin"))
    }
    /// Every pin, by key.
    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        Err(no_identity_pins(self.kind(), "listing identity pins"))
    }

    /// Remembers a raised `agent_lost`, replacing any kept for its agent.
    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError> {
        let _ = alarm;
        Err(no_lost_alarms(
            self.kind(),
            "saving a raised agent_lost alarm",
        ))
    }
    /// Forgets the `agent_lost` of `key` that `node_id` raised (it cleared
    /// it); one raised by another node stays.
    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError> {
        let _ = (key, node_id);
        Err(no_lost_alarms(
            self.kind(),
            "clearing a raised agent_lost alarm",
        ))
    }
    /// Every `agent_lost` raised and not cleared, by any node.
    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        Err(no_lost_alarms(
            self.kind(),
            "listing raised agent_lost alarms",
        ))
    }
}

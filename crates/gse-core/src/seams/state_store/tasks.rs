//! Script task records (T2..T8): the task role keeps live tasks in memory
//! and flushes what changed every few hundred milliseconds in one batch
//! ([`TaskStore::write_tasks`]), so a store never sees one write per agent
//! frame.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

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

#[async_trait]
pub trait TaskStore: Send + Sync {
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
    /// Deletes tasks created before `created_before_ms` whose entries are
    /// all final, with their entries and logs (a task still running is kept
    /// however old it is); returns how many tasks.
    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError>;
}

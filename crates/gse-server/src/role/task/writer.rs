//! The task role's side of the job engine's writer ([`crate::role::jobs`]):
//! what a task saves and how, and its work between saves.
//!
//! Every [`FLUSH_EVERY`] the changed entries of every task (their state, and
//! the log bytes not saved yet) go to the store as one [`TaskWrites`] batch,
//! one transaction; a refused batch is marked unsaved again entry by entry
//! (logs from the offset that was not saved). Each round also retries the
//! `CancelTask` frames that found their agent's queue full; once a second
//! entries past their deadline are closed, and every [`RELINK_CHECK_EVERY`]
//! running entries of agents that registered again since their task
//! started (the agent dropped that work). Tasks finished more than
//! [`MEMORY_TTL`] ago (or the oldest beyond [`MEMORY_ENTRIES`] or
//! [`MEMORY_LOG_BYTES`]) leave memory, polls then read the store; finished
//! records older than `task.retention` are pruned. At start, entries the
//! last run left unfinished are closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::seams::StoreError;
use gse_core::seams::state_store::{EntryFailure, TaskWrites};
use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED};
use tokio_util::sync::CancellationToken;

use super::model::{Effect, LiveTask};
use super::{TaskService, metrics};
use crate::role::jobs::{self, Due, JobKind, Ledger, Memory, Names, Take, Timing};

/// How often changes are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(150);
/// How long a finished task stays in memory.
pub const MEMORY_TTL: Duration = Duration::from_secs(600);
/// Most entries of finished tasks kept in memory (a few hundred bytes each
/// plus their logs); beyond it the oldest finished tasks leave early.
pub const MEMORY_ENTRIES: usize = 500_000;
/// Most log bytes kept in memory (every task's); beyond it the oldest
/// finished tasks leave early.
pub const MEMORY_LOG_BYTES: usize = 1 << 30;
/// What finished tasks may hold of memory.
pub const MEMORY: Memory = Memory {
    ttl: MEMORY_TTL,
    max_entries: MEMORY_ENTRIES,
    max_bytes: MEMORY_LOG_BYTES,
};
/// How often running entries' agents are checked for a replaced link.
const RELINK_CHECK_EVERY: Duration = Duration::from_secs(5);

impl TaskService {
    /// Saves changes until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        jobs::run(self, shutdown).await
    }
}

impl JobKind for TaskService {
    type Job = LiveTask;
    type Batch = TaskWrites;
    type Error = StoreError;
    const NAMES: Names = Names {
        noun: "task",
        plural: "tasks",
        retention_key: "task.retention",
        flush_seconds: metrics::STORE_FLUSH_SECONDS,
        store_failures: metrics::STORE_FAILURES_TOTAL,
    };

    fn ledger(&self) -> &Ledger<LiveTask> {
        &self.jobs
    }

    fn timing(&self) -> Timing {
        Timing {
            flush_every: FLUSH_EVERY,
            slow_every: Some(RELINK_CHECK_EVERY),
            memory: MEMORY,
            retention: self.config.retention,
        }
    }

    fn take(&self, task: &Arc<LiveTask>, _: Instant, _: bool, batch: &mut TaskWrites) -> Take {
        match task.state.lock().drain_into(task, &self.node_id, batch) {
            true => Take::Taken,
            false => Take::Clean,
        }
    }

    fn is_empty(batch: &TaskWrites) -> bool {
        batch.is_empty()
    }

    fn unsave(&self, taken: &[Arc<LiveTask>], batch: &TaskWrites) -> Vec<Arc<LiveTask>> {
        unsave(taken, batch)
    }

    async fn write(&self, batch: Arc<TaskWrites>) -> Result<(), StoreError> {
        self.store.write_tasks(batch).await
    }

    /// Deletes records older than the cutoff whose entries are all final
    /// (a task still running, however old, is kept), and entries and logs
    /// left without a task record.
    async fn prune(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.store.prune_tasks(created_before_ms).await
    }

    async fn fail_unfinished(&self, end_ms: u64) -> Result<u64, StoreError> {
        let failure = EntryFailure {
            status: STATUS_FAILED,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the task".into(),
            end_ms,
        };
        self.store
            .fail_unfinished_tasks(&self.node_id, failure)
            .await
    }

    async fn round(&self, now: Instant, due: Due) {
        self.retry_cancels(now).await;
        self.resend_moved().await;
        if due.second {
            self.close_overdue(now);
        }
        if due.slow {
            self.close_relinked().await;
        }
    }
}

/// Marks what a refused batch held as unsaved again in its tasks; returns
/// those that need a place in the writer's queue again. Nothing else leaves
/// memory between a drain and this (only the writer evicts), so every task
/// of the batch is in `drained`.
fn unsave(drained: &[Arc<LiveTask>], batch: &TaskWrites) -> Vec<Arc<LiveTask>> {
    let by_id: HashMap<&str, &Arc<LiveTask>> = drained.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut effects: HashMap<&str, Effect> = HashMap::new();
    for record in &batch.tasks {
        if let Some(task) = by_id.get(record.task_id.as_str()) {
            let effect = effects.entry(task.id.as_str()).or_default();
            task.state.lock().unsave_record(effect);
        }
    }
    let logs: HashMap<(&str, u32, u32), u64> = batch
        .logs
        .iter()
        .map(|c| ((c.task_id.as_str(), c.target, c.atomic_id), c.offset))
        .collect();
    for e in &batch.entries {
        let Some(task) = by_id.get(e.task_id.as_str()) else {
            continue;
        };
        let Some(idx) = task.entry_index(e.target, e.atomic_id) else {
            continue;
        };
        let log_from = logs.get(&(e.task_id.as_str(), e.target, e.atomic_id));
        let effect = effects.entry(task.id.as_str()).or_default();
        task.state
            .lock()
            .unsave_entry(idx, log_from.copied(), effect);
    }
    effects
        .into_iter()
        .filter(|(_, effect)| effect.enqueue)
        .map(|(id, _)| by_id[id].clone())
        .collect()
}

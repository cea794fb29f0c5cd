//! The task role's worker: saves what changed to the state store in batches
//! and keeps memory and the store bounded.
//!
//! Every [`FLUSH_EVERY`] the changed entries of every task (their state, and
//! the log bytes not saved yet) go to the store as one batch, one
//! transaction: agent frames never wait for the store, and 10,000 agents
//! finishing together cost one write. When the store refuses a batch, what
//! it held is marked unsaved again in the tasks themselves (memory stays the
//! only copy) and goes with the next batch; a task with unsaved changes never
//! leaves memory, so no result is lost however long the store fails. Each round also retries the `CancelTask` frames that
//! found their agent's queue full. Every few seconds, running entries of agents that
//! registered again since their task started are closed (the agent dropped
//! that work). Once a second, entries past their deadline are closed
//! and tasks finished more than [`MEMORY_TTL`] ago (or the oldest beyond
//! [`MEMORY_ENTRIES`] or [`MEMORY_LOG_BYTES`]) leave memory, polls then read the store; once an
//! hour finished records older than `task.retention` are pruned. At start, entries the last run left unfinished are closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use gse_core::seams::StoreError;
use gse_core::seams::state_store::{EntryFailure, TaskWrites};
use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED};
use tokio_util::sync::CancellationToken;

use super::model::{Effect, LiveTask};
use super::{TaskService, metrics};

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
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// How often running entries' agents are checked for a replaced link.
const RELINK_CHECK_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the worker carries between rounds.
#[derive(Default)]
pub(super) struct WriterState {
    /// The store is failing (log once, not every round).
    failing: bool,
}

impl TaskService {
    /// Saves changes until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut state = WriterState::default();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = Instant::now();
        let mut relink_checked = Instant::now();
        let mut pruned: Option<Instant> = None;
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            self.flush(&mut state).await;
            if stop {
                return;
            }
            self.retry_cancels(Instant::now());
            if housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                housekeeping = Instant::now();
                self.close_overdue(housekeeping);
                self.evict(housekeeping);
            }
            if relink_checked.elapsed() >= RELINK_CHECK_EVERY {
                relink_checked = Instant::now();
                self.close_relinked().await;
            }
            if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned = Some(Instant::now());
                self.prune().await;
            }
        }
    }

    /// Writes every change made since the last flush (including those of
    /// a batch that failed before); true when nothing is left unsaved.
    pub(super) async fn flush(&self, state: &mut WriterState) -> bool {
        let mut batch = TaskWrites::default();
        let drained = std::mem::take(&mut *self.queue.lock());
        for task in &drained {
            task.state
                .lock()
                .drain_into(task, &self.node_id, &mut batch);
        }
        if batch.is_empty() {
            return true;
        }
        let batch = Arc::new(batch);
        let began = Instant::now();
        match self.store.write_tasks(batch.clone()).await {
            Ok(()) => {
                metrics::flushed(began.elapsed());
                if std::mem::take(&mut state.failing) {
                    tracing::info!("task records are being saved again");
                }
                true
            }
            Err(e) => {
                metrics::flush_failed();
                if !std::mem::replace(&mut state.failing, true) {
                    tracing::warn!(error = %e, "cannot save task records; retrying with the next batch (unsaved tasks stay in memory, polls are served from there)");
                }
                self.unsave(&drained, &batch);
                false
            }
        }
    }

    /// Marks what a refused batch held as unsaved again in its tasks, and
    /// puts them back in the writer's queue. Nothing else leaves memory
    /// between a drain and this (only the writer evicts), so every task of
    /// the batch is in `drained`.
    fn unsave(&self, drained: &[Arc<LiveTask>], batch: &TaskWrites) {
        let by_id: HashMap<&str, &Arc<LiveTask>> =
            drained.iter().map(|t| (t.id.as_str(), t)).collect();
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
        let mut queue = self.queue.lock();
        for (id, effect) in effects {
            if effect.enqueue {
                queue.push(by_id[id].clone());
            }
        }
    }

    /// Forgets tasks finished more than [`MEMORY_TTL`] ago, and the oldest
    /// finished ones beyond [`MEMORY_ENTRIES`] or [`MEMORY_LOG_BYTES`];
    /// only tasks whose changes are all saved leave memory.
    pub(super) fn evict(&self, now: Instant) {
        self.evict_within(now, MEMORY_ENTRIES, MEMORY_LOG_BYTES);
    }

    /// [`TaskService::evict`] with the limits given: `max_entries` of
    /// finished tasks, `max_log_bytes` of every task's logs.
    pub(super) fn evict_within(&self, now: Instant, max_entries: usize, max_log_bytes: usize) {
        let mut tasks = self.tasks.write();
        let mut log_bytes = 0;
        // (finished at, entries, log bytes, id) of every saved, finished task.
        let mut done: Vec<(Instant, usize, usize, String)> = Vec::new();
        for task in tasks.values() {
            let state = task.state.lock();
            log_bytes += state.log_bytes;
            if let Some(at) = state.finished_at.filter(|_| !state.queued) {
                done.push((at, state.entries.len(), state.log_bytes, task.id.clone()));
            }
        }
        done.sort_unstable();
        let mut kept: usize = done.iter().map(|(_, n, _, _)| n).sum();
        let before = tasks.len();
        for (at, entries, bytes, id) in done {
            let expired = now.saturating_duration_since(at) >= MEMORY_TTL;
            if !expired && kept <= max_entries && log_bytes <= max_log_bytes {
                break;
            }
            tasks.remove(&id);
            kept -= entries;
            log_bytes -= bytes;
        }
        let forgotten = before - tasks.len();
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "finished tasks left memory; polls read them from the store"
            );
        }
    }

    /// Deletes records older than `task.retention` whose entries are all
    /// final (a task still running, however old, is kept), and entries and
    /// logs left without a task record.
    async fn prune(&self) {
        let cutoff = gse_core::now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        match self.store.prune_tasks(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "pruned task records older than task.retention"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune old task records; will try again in an hour")
            }
        }
    }

    /// Closes the entries this node's last run left unfinished.
    pub(super) async fn recover(&self) -> Result<(), StoreError> {
        let failure = EntryFailure {
            status: STATUS_FAILED,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the task".into(),
            end_ms: gse_core::now_ms(),
        };
        let closed = self
            .store
            .fail_unfinished_tasks(&self.node_id, failure)
            .await?;
        if closed > 0 {
            tracing::warn!(
                entries = closed,
                "closed task entries left unfinished when this node last stopped"
            );
        }
        Ok(())
    }
}

//! The task role's worker: saves what changed to the state store in batches
//! and keeps memory and the store bounded.
//!
//! Every [`FLUSH_EVERY`] the changed entries of every task (their state, and
//! the log bytes not saved yet) go to the store as one batch, one
//! transaction: agent frames never wait for the store, and 10,000 agents
//! finishing together cost one write. A failed batch is kept and sent again
//! with the next one. Each round also retries the `CancelTask` frames that
//! found their agent's queue full. Every few seconds, running entries of agents that
//! registered again since their task started are closed (the agent dropped
//! that work). Once a second, entries past their deadline are closed
//! and tasks finished more than [`MEMORY_TTL`] ago (or the oldest beyond
//! [`MEMORY_ENTRIES`]) leave memory, polls then read the store; once an
//! hour finished records older than `task.retention` are pruned. At start, entries the last run left unfinished are closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::seams::StoreError;
use gse_core::seams::state_store::{EntryFailure, TaskWrites};
use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED};
use tokio_util::sync::CancellationToken;

use super::{TaskService, metrics};

/// How often changes are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(150);
/// How long a finished task stays in memory.
pub const MEMORY_TTL: Duration = Duration::from_secs(600);
/// Most entries of finished tasks kept in memory (a few hundred bytes each
/// plus their logs); beyond it the oldest finished tasks leave early.
pub const MEMORY_ENTRIES: usize = 500_000;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// How often running entries' agents are checked for a replaced link.
const RELINK_CHECK_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Entries a failing store may leave waiting before they are dropped.
const MAX_PENDING_ENTRIES: usize = 2_000_000;

/// What the worker carries between rounds.
#[derive(Default)]
pub(super) struct WriterState {
    /// A batch the store refused, sent again with the next one.
    pending: Option<Arc<TaskWrites>>,
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
                if state.pending.is_none() {
                    self.evict(housekeeping);
                }
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

    /// Writes every change made since the last flush (and a batch that
    /// failed before); true when nothing is left unsaved.
    pub(super) async fn flush(&self, state: &mut WriterState) -> bool {
        let mut batch = match state.pending.take() {
            Some(shared) => Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone()),
            None => TaskWrites::default(),
        };
        for task in std::mem::take(&mut *self.queue.lock()) {
            task.state
                .lock()
                .drain_into(&task, &self.node_id, &mut batch);
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
                self.keep_for_retry(state, batch, &e);
                false
            }
        }
    }

    fn keep_for_retry(&self, state: &mut WriterState, batch: Arc<TaskWrites>, e: &StoreError) {
        if !std::mem::replace(&mut state.failing, true) {
            tracing::warn!(error = %e, "cannot save task records; retrying with the next batch (polls are served from memory meanwhile)");
        }
        if batch.entries.len() > MAX_PENDING_ENTRIES {
            tracing::error!(
                entries = batch.entries.len(),
                "the state store has failed for too long; dropping unsaved task changes (they stay in memory until the tasks are forgotten)"
            );
            return;
        }
        state.pending = Some(batch);
    }

    /// Forgets tasks finished more than [`MEMORY_TTL`] ago, and the oldest
    /// finished ones beyond [`MEMORY_ENTRIES`]; only tasks whose changes
    /// are all saved leave memory.
    pub(super) fn evict(&self, now: Instant) {
        let mut tasks = self.tasks.write();
        // (finished at, entries, id) of every saved, finished task.
        let mut done: Vec<(Instant, usize, String)> = tasks
            .values()
            .filter_map(|task| {
                let state = task.state.lock();
                let at = state.finished_at.filter(|_| !state.queued)?;
                Some((at, state.entries.len(), task.id.clone()))
            })
            .collect();
        done.sort_unstable();
        let mut kept: usize = done.iter().map(|(_, n, _)| n).sum();
        let before = tasks.len();
        for (at, entries, id) in done {
            let expired = now.saturating_duration_since(at) >= MEMORY_TTL;
            if !expired && kept <= MEMORY_ENTRIES {
                break;
            }
            tasks.remove(&id);
            kept -= entries;
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

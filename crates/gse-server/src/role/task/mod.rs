//! The task role (C3, T1, T6-T8): script tasks from the API to agents and
//! their results back.
//!
//! Start at [`TaskService`]. [`TaskService::start_script`] checks the
//! dangerous-operation rules ([`guard`]), lists every target at once (unknown
//! or offline agents fail there with 117) and hands each reachable agent one
//! `RunScript` through the node's [`Sender`], wherever the agent is held
//! (this role never sees connections or nodes). Agents' `TaskOutput` and
//! `TaskStatus` frames arrive through [`AgentFrames`] ([`frames`]); polls and
//! terminate are in [`query`] and [`control`]. Live tasks are kept in memory
//! ([`model`]) in the job engine's ledger ([`crate::role::jobs`]), whose
//! writer saves what changed in batches, forgets finished tasks after a
//! while and prunes old records; [`writer`] is the task role's side of it.
//! HTTP shapes are the API role's business, not this module's.

pub mod config;
mod control;
mod create;
mod frames;
pub(crate) mod guard;
mod metrics;
mod model;
mod moving;
mod query;
pub mod spec;
mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gse_core::danger::{DangerError, DangerPolicy, DangerRuleSpec};
use gse_core::seams::{StateStore, StoreError};
use parking_lot::Mutex;

pub use config::TaskConfig;
pub use query::{EntryView, MAX_ANSWER_SCREEN_BYTES};

use crate::cluster::sender::{Followers, Sender};
use crate::role::alarm::AlarmService;
use crate::role::jobs::{self, Ledger};
use model::{Effect, LiveTask, TaskState};

/// The per-host error of a target no agent record matches (task, file and
/// proc roles alike).
pub fn unknown_agent(name: &str) -> String {
    format!("agent {name} is unknown to gse; check the agent id, or that the agent has registered")
}

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(
        "task {0:?} not found: it was never started, or it is older than task.retention and was pruned"
    )]
    NotFound(String),
    /// The task is too large to send: `bytes` over `limit`; `field` names
    /// the request field to change (`scripts`, or `agents[].user` when the
    /// distinct users multiply the bodies past what one task may hold).
    #[error("{problem}")]
    TooLarge {
        field: &'static str,
        problem: String,
        bytes: usize,
        limit: usize,
    },
    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),
}

/// Why the task role could not start.
#[derive(Debug, thiserror::Error)]
pub enum TaskStartError {
    #[error("cannot use the dangerous-operation rules of [danger]: {0}")]
    Danger(#[from] DangerError),
    #[error(
        "cannot close the tasks left unfinished by the last run in the state store: {0}; check the store, then start again"
    )]
    Recover(StoreError),
}

/// What [`TaskService::start`] needs.
pub struct TaskParts {
    pub node_id: String,
    pub config: TaskConfig,
    pub store: Arc<dyn StateStore>,
    /// How frames reach agents, wherever they are held.
    pub sender: Arc<Sender>,
    pub danger_rules: Vec<DangerRuleSpec>,
    pub alarms: Option<Arc<AlarmService>>,
}

/// Shared state of the task role.
pub struct TaskService {
    node_id: String,
    config: TaskConfig,
    store: Arc<dyn StateStore>,
    sender: Arc<Sender>,
    danger: Arc<DangerPolicy>,
    alarms: Option<Arc<AlarmService>>,
    /// Tasks in memory, those with unfinished entries, and those with
    /// changes the writer has not taken yet.
    jobs: Ledger<LiveTask>,
    /// Cancels waiting for room in their agent's queue, by (task, target).
    cancels: Mutex<HashMap<(String, u32), control::PendingCancel>>,
    /// Targets waiting for their moving agent to register again
    /// ([`moving`]).
    moving: Followers<(Arc<LiveTask>, u32)>,
    seq: AtomicU64,
}

// === impl TaskService ===

impl TaskService {
    /// Closes what the last run left unfinished, then returns the service;
    /// spawn [`TaskService::run`] to save its changes.
    pub async fn start(parts: TaskParts) -> Result<Arc<Self>, TaskStartError> {
        let svc = Self::new(parts)?;
        jobs::recover(&*svc)
            .await
            .map_err(TaskStartError::Recover)?;
        Ok(svc)
    }

    /// The service without touching the store (tests call `recover` and
    /// `flush` themselves).
    fn new(parts: TaskParts) -> Result<Arc<Self>, TaskStartError> {
        let danger = Arc::new(DangerPolicy::new(&parts.danger_rules)?);
        Ok(Arc::new(TaskService {
            sender: parts.sender,
            node_id: parts.node_id,
            config: parts.config,
            store: parts.store,
            danger,
            alarms: parts.alarms,
            jobs: Ledger::default(),
            cancels: Mutex::new(HashMap::new()),
            moving: Followers::default(),
            seq: AtomicU64::new(1),
        }))
    }

    /// A new task id, like GSE's `GSETASK:S:<time><random>:<seq>`.
    fn new_task_id(&self) -> String {
        super::gse_task_id('S', self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The task, if it is in memory.
    fn live(&self, task_id: &str) -> Option<Arc<LiveTask>> {
        self.jobs.get(task_id)
    }

    /// Makes a new task visible to frames, polls, disconnects and the writer.
    fn register(&self, task: &Arc<LiveTask>) {
        let open = task.state.lock().book.unfinished() > 0;
        self.jobs.register(task, open);
    }

    /// Runs `f` on a task's state, then acts on what it changed.
    fn change(&self, task: &Arc<LiveTask>, f: impl FnOnce(&mut TaskState, &mut Effect)) {
        let mut effect = Effect::default();
        f(&mut task.state.lock(), &mut effect);
        metrics::entries_finished(&effect.finals);
        if self.jobs.settle(task, &effect) {
            // Nothing is sent for it any more.
            *task.bodies.lock() = Vec::new();
            tracing::info!(task_id = %task.id, targets = task.targets.len(), "task finished");
        }
    }

    /// Number of tasks in memory and of those still running.
    pub fn counts(&self) -> (usize, usize) {
        self.jobs.counts()
    }
}

//! The proc role (D2, C8): nodeman's plugin-process operations, from the
//! API to agents' plugin supervisors, and their results and status back.
//!
//! Start at [`ProcService`]. [`ProcService::operate`] turns the operations
//! of one `operate_proc_multi` call into a task ([`model`]) with one entry
//! per (operation, agent) and puts it in the queue; [`ProcService::run`]
//! dispatches queued tasks every `proc.dispatch_interval` through the
//! node's [`Sender`] (unknown, offline or unreachable agents answer 117
//! there) and fails overdue entries; control
//! commands a dangerous-operation rule blocks are refused first
//! ([`danger`]). Agents' results, status reports and alarms arrive through
//! [`AgentFrames`] ([`frames`]); the last status each agent reported is kept in
//! [`status::StatusCache`] for `get_proc_status_v2`. Tasks live in memory,
//! in the job engine's ledger ([`crate::role::jobs`]), for
//! `proc.retention`: they are not stored, so the engine's writer does not
//! run for them; HTTP shapes are the API role's.

pub mod codes;
pub mod config;
mod danger;
mod frames;
mod metrics;
pub mod model;
mod moving;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gse_core::AgentRef;
use gse_core::danger::DangerPolicy;
use gse_core::seams::{StateStore, StoreError};
use gse_proto::link::ProcOperate;
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::ProcConfig;
pub use model::{Answer, OpRequest};
pub use status::ProcView;

use crate::cluster::sender::{Followers, SendError, Sender};
use crate::role::alarm::AlarmService;
use crate::role::jobs::Ledger;
use codes::*;
use model::{EntryState, ProcTask};

/// Why a proc call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(
        "proc task {0:?} not found: it was never started, or it is older than proc.retention and was dropped"
    )]
    NotFound(String),
    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),
}

/// What [`ProcService::new`] needs.
pub struct ProcParts {
    pub node_id: String,
    pub config: ProcConfig,
    pub store: Arc<dyn StateStore>,
    /// How frames reach agents, wherever they are held.
    pub sender: Arc<Sender>,
    pub alarms: Option<Arc<AlarmService>>,
    /// The dangerous-operation rules control commands are checked against.
    pub danger: Arc<DangerPolicy>,
}

/// The results of one task, as `get_proc_operate_result_v2` shows them.
pub struct TaskResults {
    /// Nothing was dispatched yet (envelope 1000115).
    pub queued: bool,
    pub answers: std::collections::BTreeMap<String, Answer>,
}

/// Shared state of the proc role.
pub struct ProcService {
    node_id: String,
    config: ProcConfig,
    store: Arc<dyn StateStore>,
    sender: Arc<Sender>,
    alarms: Option<Arc<AlarmService>>,
    danger: Arc<DangerPolicy>,
    /// Tasks in memory, those with entries sent and not answered (open),
    /// and those waiting for the dispatcher (the queue).
    jobs: Ledger<ProcTask>,
    /// Task ids in creation order, for retention.
    order: Mutex<std::collections::VecDeque<String>>,
    status: status::StatusCache,
    seq: AtomicU64,
    /// Entries whose agent was moving to another node (K2) when they were
    /// sent, by task: sent again once it registered there ([`moving`]).
    moving: Followers<(Arc<ProcTask>, Vec<usize>)>,
}

// === impl ProcService ===

impl ProcService {
    pub fn new(parts: ProcParts) -> Arc<Self> {
        Arc::new(ProcService {
            sender: parts.sender,
            node_id: parts.node_id,
            config: parts.config,
            store: parts.store,
            alarms: parts.alarms,
            danger: parts.danger,
            jobs: Ledger::default(),
            order: Mutex::new(Default::default()),
            status: status::StatusCache::default(),
            seq: AtomicU64::new(1),
            moving: Followers::default(),
        })
    }

    /// Queues the operations as one task; returns its id. Operations whose
    /// control commands a dangerous-operation rule blocks are answered at
    /// once and never sent.
    pub fn operate(&self, ops: Vec<OpRequest>) -> String {
        let id = super::gse_task_id('P', self.seq.fetch_add(1, Ordering::Relaxed));
        let findings = danger::check(&self.danger, &ops);
        let task = Arc::new(ProcTask::new(id.clone(), ops));
        danger::apply(&task, &findings, self.alarms.as_deref(), &self.node_id);
        let entries = task.state.lock().entries.len();
        tracing::info!(task_id = %id, ops = task.ops.len(), entries, "proc task queued");
        metrics::task_created();
        self.jobs.register(&task, false);
        self.order.lock().push_back(id.clone());
        self.prune();
        id
    }

    /// The task's answers by result key.
    pub fn results(&self, task_id: &str) -> Result<TaskResults, ProcError> {
        let task = self
            .jobs
            .get(task_id)
            .ok_or_else(|| ProcError::NotFound(task_id.to_string()))?;
        let (queued, answers) = task.answers();
        Ok(TaskResults { queued, answers })
    }

    /// The last reported state of plugin `namespace:name` on each agent.
    pub async fn status(
        &self,
        namespace: &str,
        name: &str,
        agents: &[(String, AgentRef)],
    ) -> Result<Vec<ProcView>, ProcError> {
        let refs: Vec<AgentRef> = agents.iter().map(|(_, r)| r.clone()).collect();
        let records = self.store.get_agents(&refs).await?;
        Ok(agents
            .iter()
            .zip(records)
            .map(|((sent, r), rec)| self.status.view(sent, r, rec.as_ref(), namespace, name))
            .collect())
    }

    /// Dispatches queued tasks and fails overdue entries until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.dispatch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.resend_moved().await;
            for task in self.jobs.take_queue() {
                if let Err(e) = self.dispatch_task(&task).await {
                    tracing::error!(task_id = %task.id, error = %e, "cannot dispatch a proc task; its entries fail");
                    self.fail_open(&task, CODE_FAILED, &format!("dispatch failed: {e}"));
                }
            }
            self.expire();
        }
    }

    /// Sends every queued entry of `task` to its agent.
    async fn dispatch_task(&self, task: &Arc<ProcTask>) -> Result<(), StoreError> {
        let refs: Vec<AgentRef> = task
            .state
            .lock()
            .entries
            .iter()
            .map(|e| task.ops[e.op].targets[e.target].1.clone())
            .collect();
        let records = self.store.get_agents(&refs).await?;
        // What to send, read under the lock; the sends wait on the
        // directory and the node link, so they run without it.
        let mut sends = Vec::new();
        {
            let mut st = task.state.lock();
            st.dispatched = true;
            for (index, record) in records.into_iter().enumerate() {
                let entry = &st.entries[index];
                if entry.state != EntryState::Queued {
                    continue;
                }
                let op = &task.ops[entry.op];
                let name = op.targets[entry.target].0.clone();
                match record {
                    None => {
                        let why = crate::role::task::unknown_agent(&name);
                        st.entries[index].state =
                            EntryState::done(Answer::new(CODE_AGENT_ABNORMAL, why));
                    }
                    Some(rec) => {
                        let frame =
                            Frame::new(MsgType::ProcOperate, 0, &operate_frame(task, index, op));
                        let deadline = Instant::now() + self.answer_time(&op.spec);
                        sends.push((index, name, rec.key, frame, deadline));
                    }
                }
            }
        }
        if sends.is_empty() {
            return Ok(());
        }
        // Open before the sends, so a disconnect during them is seen.
        self.jobs.open(task);
        // Every entry on its own: one agent's lookup or forward does not
        // hold up the others.
        let one = |(index, name, key, frame, deadline): (usize, String, _, Frame, Instant)| async move {
            let located = match self.sender.locate(key).await {
                Ok(at) => at,
                Err(e) => {
                    let answer = Answer::new(CODE_AGENT_ABNORMAL, e.for_host(&name));
                    return self.settle(task, index, answer);
                }
            };
            // Recorded before the send: a disconnect of that claim during
            // the send finds the entry.
            {
                let mut st = task.state.lock();
                let entry = &mut st.entries[index].state;
                if *entry != EntryState::Queued {
                    return;
                }
                *entry = EntryState::Sent {
                    agent: key,
                    held: located.delivery(),
                    deadline,
                };
            }
            match self.sender.deliver(&located, frame).await {
                Ok(_) => {}
                Err(SendError::Moving(agent)) => {
                    self.follow(task, vec![index], agent, located.delivery())
                }
                Err(e) => {
                    let answer = Answer::new(CODE_AGENT_ABNORMAL, e.for_host(&name));
                    self.settle(task, index, answer);
                }
            }
        };
        futures::future::join_all(sends.into_iter().map(one)).await;
        self.retire(task);
        Ok(())
    }

    /// Answers one entry that is still waiting (queued, or sent and not
    /// answered) with `answer`.
    fn settle(&self, task: &ProcTask, index: usize, answer: Answer) {
        task.state.lock().close(index, None, answer);
    }

    /// How long an agent may take to answer an op with this spec.
    fn answer_time(&self, spec: &gse_proto::link::ProcSpec) -> Duration {
        let secs = |n: u32, default: u64| if n == 0 { default } else { u64::from(n) };
        let op = secs(spec.op_timeout_secs, 60).min(600);
        let check = secs(spec.start_check_secs, 5)
            .max(secs(spec.stop_check_secs, 5))
            .min(300);
        // A restart may run two commands and a version probe.
        Duration::from_secs(2 * op + check + 10) + self.config.answer_grace
    }

    /// Fails entries whose answer is overdue.
    fn expire(&self) {
        let now = Instant::now();
        for task in self.jobs.open_jobs() {
            {
                let mut st = task.state.lock();
                for e in st.entries.iter_mut() {
                    if let EntryState::Sent {
                        deadline, agent, ..
                    } = e.state
                        && deadline <= now
                    {
                        e.state = EntryState::done(Answer::new(
                            CODE_FAILED,
                            format!("agent {agent} did not answer the operation in time"),
                        ));
                    }
                }
            }
            self.retire(&task);
        }
    }

    /// Forgets an active task once it has nothing open.
    fn retire(&self, task: &Arc<ProcTask>) {
        if !task.unfinished() {
            self.jobs.close(&task.id);
        }
    }

    fn fail_open(&self, task: &Arc<ProcTask>, code: i32, why: &str) {
        let mut st = task.state.lock();
        st.dispatched = true;
        for i in 0..st.entries.len() {
            st.close(i, None, Answer::new(code, why));
        }
    }

    /// Drops tasks older than the retention or beyond `max_tasks`.
    /// (Proc tasks are memory only: they leave by age from their creation,
    /// running or not, rather than by the engine's writer.)
    fn prune(&self) {
        let mut order = self.order.lock();
        while let Some(oldest) = order.front() {
            let old = self
                .jobs
                .get(oldest)
                .is_none_or(|t| t.created.elapsed() > self.config.retention);
            if !old && self.jobs.counts().0 <= self.config.max_tasks {
                break;
            }
            if let Some(id) = order.pop_front() {
                self.jobs.remove(&id);
            }
        }
    }
}

/// The frame for entry `index` of `task`.
fn operate_frame(task: &ProcTask, index: usize, op: &OpRequest) -> ProcOperate {
    ProcOperate {
        task_id: task.id.clone(),
        index: index as u32,
        namespace: op.namespace.clone(),
        name: op.name.clone(),
        op_type: op.op_type,
        spec: Some(op.spec.clone()),
        labels: op.labels.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests;

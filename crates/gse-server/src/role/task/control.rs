//! Ending entries early: terminate (T8 cancel), agents whose link was
//! replaced behind our back, and the deadline for agents that stay silent.
//!
//! Terminate is asynchronous, as bk-job expects: agents held by any node
//! are sent `CancelTask` through the sender and report 126 themselves;
//! entries whose agent is offline are closed here at once with
//! DISCARDED/126; an agent whose node cannot be reached is closed with that
//! error (the work may still run there). A cancel that finds the agent's
//! queue full, or the directory down, is retried from the writer's tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::AgentKey;

use gse_core::task::{ERR_AGENT_DOWN, ERR_TERMINATED, STATUS_DISCARDED, STATUS_FAILED};
use gse_proto::link::CancelTask;
use gse_proto::{Frame, MsgType};

use super::model::LiveTask;
use super::spec::TargetName;
use super::{TaskError, TaskService};
use crate::cluster::sender::{Delivery, SendError};

/// How long a cancel that finds its agent's queue full is retried (longer
/// than a stuck link takes to be closed, which closes the entries).
const CANCEL_RETRY_FOR: Duration = Duration::from_secs(30);
/// When a task with no pending deadline is looked at again.
const RECHECK_IDLE: Duration = Duration::from_secs(3600);

/// What became of a `CancelTask`.
#[derive(Debug, PartialEq, Eq)]
enum Cancel {
    Sent,
    /// The agent's queue is full; retried from the writer.
    Busy,
    /// The agent is offline, or its connection ended: nothing more runs
    /// there.
    NotConnected,
    /// The agent is held somewhere this node cannot reach (the per-host
    /// error): the work may go on there.
    Unreachable(String),
}

/// A cancel waiting for room in its agent's queue.
pub(super) struct PendingCancel {
    task: Arc<LiveTask>,
    key: AgentKey,
    since: Instant,
}

impl TaskService {
    /// Stops a task on the named targets (`None` = all of them).
    pub async fn terminate(
        &self,
        task_id: &str,
        targets: Option<&[TargetName]>,
    ) -> Result<(), TaskError> {
        let Some(task) = self.live(task_id) else {
            // Not in memory: finished long ago (or before a restart, which
            // closed it), so there is nothing left to stop.
            return match self.store.get_task(task_id).await? {
                Some(_) => Ok(()),
                None => Err(TaskError::NotFound(task_id.to_string())),
            };
        };
        let chosen: Vec<u32> = match targets {
            None => (0..task.targets.len() as u32).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| {
                    task.index
                        .find(&task.targets, &n.bk_agent_id, &n.bk_container_id)
                })
                .collect(),
        };
        let key_of: HashMap<u32, AgentKey> =
            task.by_agent.iter().map(|(key, &t)| (t, *key)).collect();
        let (mut cancelled, mut pending) = (0usize, 0usize);
        for target in chosen {
            if !self.target_unfinished(&task, target) {
                continue;
            }
            let Some(&key) = key_of.get(&target) else {
                self.close_unreachable(&task, target);
                continue;
            };
            match self.cancel_on(&task, target, key).await {
                Cancel::Sent => cancelled += 1,
                Cancel::Busy => {
                    pending += 1;
                    self.cancels
                        .lock()
                        .entry((task.id.clone(), target))
                        .or_insert_with(|| PendingCancel {
                            task: task.clone(),
                            key,
                            since: Instant::now(),
                        });
                }
                Cancel::NotConnected => self.close_unreachable(&task, target),
                Cancel::Unreachable(why) => self.close_uncancelled(&task, target, &why),
            }
        }
        tracing::info!(task_id, cancelled, pending, "task terminate requested");
        Ok(())
    }

    /// Closes a target whose agent cannot be told to stop: nothing more runs.
    fn close_unreachable(&self, task: &Arc<LiveTask>, target: u32) {
        self.close_target(
            task,
            target,
            STATUS_DISCARDED,
            ERR_TERMINATED,
            "terminated; the agent was not connected, so nothing more ran",
        );
    }

    /// Closes a target whose agent could not be told to stop because its
    /// node is out of reach: the error says so, and that it may still run.
    fn close_uncancelled(&self, task: &Arc<LiveTask>, target: u32, why: &str) {
        let msg = format!("terminate requested, but {why}; the task may still run there");
        self.close_target(task, target, STATUS_FAILED, ERR_AGENT_DOWN, &msg);
    }

    fn target_unfinished(&self, task: &LiveTask, target: u32) -> bool {
        task.target_unfinished(&task.state.lock(), target)
    }

    /// Sends `CancelTask` to the agent, wherever it is held.
    async fn cancel_on(&self, task: &LiveTask, target: u32, key: AgentKey) -> Cancel {
        let frame = Frame::new(
            MsgType::CancelTask,
            0,
            &CancelTask {
                task_id: task.id.clone(),
            },
        );
        let name = &task.targets[target as usize].bk_agent_id;
        match self.sender.send(key, frame).await {
            Ok(_) => Cancel::Sent,
            Err(e) if e.is_transient() => {
                tracing::debug!(task_id = %task.id, agent = %name, error = %e, "cannot send CancelTask yet; will retry");
                Cancel::Busy
            }
            Err(SendError::Offline(_) | SendError::Stale(_) | SendError::Moving(_)) => {
                Cancel::NotConnected
            }
            Err(e) => Cancel::Unreachable(e.for_host(name)),
        }
    }

    /// Sends the cancels that found their agent's queue full again; the
    /// agent reports 126 itself once one arrives. Called every writer tick.
    pub(super) async fn retry_cancels(&self, now: Instant) {
        let due = {
            let mut cancels = self.cancels.lock();
            if cancels.is_empty() {
                return;
            }
            std::mem::take(&mut *cancels)
        };
        for ((task_id, target), p) in due {
            if !self.target_unfinished(&p.task, target) {
                continue;
            }
            match self.cancel_on(&p.task, target, p.key).await {
                Cancel::Sent => {
                    tracing::info!(task_id, target, "task cancel sent after a retry")
                }
                Cancel::NotConnected => self.close_unreachable(&p.task, target),
                Cancel::Unreachable(why) => self.close_uncancelled(&p.task, target, &why),
                Cancel::Busy if now.saturating_duration_since(p.since) >= CANCEL_RETRY_FOR => {
                    let name = &p.task.targets[target as usize].bk_agent_id;
                    tracing::error!(task_id, agent = %name, "could not send CancelTask within {}: the agent's link stays full; the task keeps running there", humantime::format_duration(CANCEL_RETRY_FOR));
                }
                Cancel::Busy => {
                    self.cancels.lock().entry((task_id, target)).or_insert(p);
                }
            }
        }
    }

    /// Closes the targets past their deadline: their agents are connected
    /// but sent no final status in time (the atomic tasks' timeouts plus a
    /// grace from when one was reported running), or never started the
    /// task within the generous limit for queued work.
    pub(super) fn close_overdue(&self, now: Instant) {
        let active = self.jobs.open_jobs();
        for task in active {
            let mut overdue = Vec::new();
            {
                let mut state = task.state.lock();
                if state.next_check > now {
                    continue;
                }
                let mut next: Option<Instant> = None;
                for &target in task.by_agent.values() {
                    if !task.target_unfinished(&state, target) {
                        continue;
                    }
                    let started = state.run_deadlines.get(&target).copied();
                    let deadline = started.unwrap_or(task.queued_deadline);
                    if deadline <= now {
                        overdue.push((target, started.is_some()));
                    } else {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    }
                }
                state.next_check = next.unwrap_or(now + RECHECK_IDLE);
            }
            if overdue.is_empty() {
                continue;
            }
            tracing::warn!(task_id = %task.id, targets = overdue.len(), "task past its deadline; closing what its agents did not finish");
            for (target, started) in overdue {
                let name = &task.targets[target as usize].bk_agent_id;
                let msg = if started {
                    format!(
                        "agent {name} sent no final status within the atomic tasks' timeouts plus 60s; it may be stuck"
                    )
                } else {
                    format!("agent {name} never reported the task running; it may be stuck")
                };
                self.close_target(&task, target, STATUS_FAILED, ERR_AGENT_DOWN, &msg);
            }
        }
    }

    /// Closes running entries whose agent no longer has the claim they
    /// were delivered to: the agent killed that work when that link broke,
    /// but its end was not seen here (a newer connection replaced it, on
    /// this node or another, before the old link timed out, or the node
    /// that held it died). Asks the directory, the one authority on where
    /// an agent is, and compares claims, not times: a task delivered under
    /// the newer claim keeps running, however its creation and the agent's
    /// registration interleaved.
    pub(super) async fn close_relinked(&self) {
        let active = self.jobs.open_jobs();
        let mut current: HashMap<AgentKey, Option<Delivery>> = HashMap::new();
        for task in &active {
            for (&key, &target) in &task.by_agent {
                let sent = {
                    let state = task.state.lock();
                    // Not sent yet: the send itself finds out where the agent is.
                    match state.sent_on.get(&target) {
                        Some(&d) if task.target_unfinished(&state, target) => d,
                        _ => continue,
                    }
                };
                let now = match current.get(&key) {
                    Some(now) => *now,
                    None => match self.sender.current(key).await {
                        Ok(now) => *current.entry(key).or_insert(now),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot check task agents' claims; will try again");
                            return;
                        }
                    },
                };
                if now != Some(sent) {
                    self.close_target(
                        task,
                        target,
                        STATUS_FAILED,
                        ERR_AGENT_DOWN,
                        "agent lost its connection during the task",
                    );
                }
            }
        }
    }
}

//! Ending entries early: terminate (T8 cancel), agents whose link was
//! replaced behind our back, and the deadline for agents that stay silent.
//!
//! Terminate is asynchronous, as bk-job expects: connected agents are sent
//! `CancelTask` and report 126 themselves; entries whose agent cannot be
//! told are closed here at once with DISCARDED/126.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use gse_core::{AgentKey, AgentRef};

use gse_core::task::{ERR_AGENT_DOWN, ERR_TERMINATED, STATUS_DISCARDED, STATUS_FAILED};
use gse_proto::link::CancelTask;
use gse_proto::{Frame, MsgType};

use super::model::LiveTask;
use super::spec::TargetName;
use super::{Route, TaskError, TaskService};

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
        let mut cancelled = 0usize;
        for target in chosen {
            if !self.target_unfinished(&task, target) {
                continue;
            }
            match key_of.get(&target) {
                Some(&key) if self.cancel_on(&task, target, key) => cancelled += 1,
                _ => self.close_target(
                    &task,
                    target,
                    STATUS_DISCARDED,
                    ERR_TERMINATED,
                    "terminated; the agent was not connected, so nothing more ran",
                ),
            }
        }
        tracing::info!(task_id, cancelled, "task terminate requested");
        Ok(())
    }

    fn target_unfinished(&self, task: &LiveTask, target: u32) -> bool {
        let state = task.state.lock();
        (0..task.atomic_count).any(|a| {
            task.entry_index(target, a)
                .is_some_and(|i| !state.entries[i as usize].is_final())
        })
    }

    /// Sends `CancelTask` to a connected agent; false if it cannot be told.
    fn cancel_on(&self, task: &LiveTask, target: u32, key: AgentKey) -> bool {
        if !self.dispatch.is_local(key) {
            return false;
        }
        let frame = Frame::new(
            MsgType::CancelTask,
            0,
            &CancelTask {
                task_id: task.id.clone(),
            },
        );
        let name = &task.targets[target as usize].bk_agent_id;
        match self.dispatch.send(&Route::Local, name, key, frame) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "cannot send CancelTask");
                false
            }
        }
    }

    /// Closes the entries of tasks past their deadline: their agents are
    /// connected but sent no final status in time.
    pub(super) fn close_overdue(&self, now: Instant) {
        let overdue: Vec<Arc<LiveTask>> = self
            .active
            .lock()
            .values()
            .filter(|t| t.deadline <= now)
            .cloned()
            .collect();
        for task in overdue {
            tracing::warn!(task_id = %task.id, "task past its deadline; closing what its agents did not finish");
            for &target in task.by_agent.values() {
                let name = &task.targets[target as usize].bk_agent_id;
                let msg = format!(
                    "agent {name} sent no final status within the atomic tasks' timeouts plus 60s; it may be stuck"
                );
                self.close_target(&task, target, STATUS_FAILED, ERR_AGENT_DOWN, &msg);
            }
        }
    }

    /// Closes running entries of agents that registered again after their
    /// task started: the agent killed that work when its old link broke,
    /// but the link never ended on this node (a newer connection replaced
    /// it before the old one timed out, or the agent moved to another node).
    pub(super) async fn close_relinked(&self) {
        let active: Vec<Arc<LiveTask>> = self.active.lock().values().cloned().collect();
        let mut watched: HashMap<AgentKey, Vec<(Arc<LiveTask>, u32)>> = HashMap::new();
        for task in &active {
            for (&key, &target) in &task.by_agent {
                if self.target_unfinished(task, target) {
                    watched.entry(key).or_default().push((task.clone(), target));
                }
            }
        }
        if watched.is_empty() {
            return;
        }
        let keys: Vec<AgentKey> = watched.keys().copied().collect();
        let refs: Vec<AgentRef> = keys.iter().map(|k| AgentRef::Key(*k)).collect();
        let records = match self.store.get_agents(&refs).await {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check task agents' links; will try again");
                return;
            }
        };
        for (key, record) in keys.iter().zip(records) {
            for (task, target) in &watched[key] {
                let relinked = record
                    .as_ref()
                    .is_none_or(|r| !r.alive || r.connected_at_ms > task.created_ms);
                if relinked {
                    self.close_target(
                        task,
                        *target,
                        STATUS_FAILED,
                        ERR_AGENT_DOWN,
                        "agent lost its connection during the task",
                    );
                }
            }
        }
    }
}

//! Ending transfers early and telling agents to stop: terminate, the
//! transfer's deadline, and the `CancelTransfer` a task's agents get once
//! its downloads are all final (they stop seeding and drop their caches).
//!
//! Terminate is asynchronous, as bk-job expects, but the entries it names
//! are closed here at once (126): agents are sent `CancelTransfer` and
//! whatever they report afterwards finds the entries final.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use gse_core::AgentKey;
use gse_proto::link::CancelTransfer;
use gse_proto::{Frame, MsgType};

use super::codes::*;
use super::model::{LiveTransfer, Outcome, TaskPlan};
use super::query::NameSet;
use super::spec::AgentName;
use super::{FileError, FileService};

impl FileService {
    /// Stops a transfer for the named agents (`None` or empty = all of it):
    /// a named source stops its whole task, a named target its download.
    pub async fn terminate(
        &self,
        task_id: &str,
        agents: Option<&[AgentName]>,
    ) -> Result<(), FileError> {
        let Some(t) = self.live(task_id) else {
            // Not in memory: finished long ago (or before a restart, which
            // closed it), so there is nothing left to stop.
            return match self.store.get_file_transfer(task_id).await? {
                Some(_) => Ok(()),
                None => Err(FileError::NotFound(task_id.to_string())),
            };
        };
        let names = agents.filter(|a| !a.is_empty()).map(NameSet::new);
        let (mut whole, mut partial) = (0usize, 0usize);
        for (task, plan) in t.tasks.iter().enumerate() {
            let chosen: Vec<u32> = match &names {
                None => Vec::new(),
                Some(n) if n.matches_slot(&plan.source) => Vec::new(),
                Some(n) => {
                    let picked: Vec<u32> = (0..plan.targets.len() as u32)
                        .filter(|&i| n.matches_slot(&plan.targets[i as usize]))
                        .collect();
                    if picked.is_empty() {
                        continue;
                    }
                    picked
                }
            };
            if chosen.is_empty() {
                whole += 1;
                self.terminate_task(&t, task);
            } else {
                partial += chosen.len();
                self.terminate_targets(&t, task, &chosen);
            }
        }
        tracing::info!(
            task_id,
            tasks = whole,
            targets = partial,
            "file transfer terminate requested"
        );
        Ok(())
    }

    fn terminate_task(&self, t: &Arc<LiveTransfer>, task: usize) {
        let plan = &t.tasks[task];
        self.change(t, Some("terminated"), |st, effect| {
            st.close(
                plan.upload,
                Outcome::failed(ERR_TERMINATED, "terminated"),
                effect,
            );
            for i in 0..plan.targets.len() as u32 {
                st.close(
                    plan.download(i),
                    Outcome::failed(ERR_TERMINATED, "terminated"),
                    effect,
                );
            }
        });
    }

    /// Ends some targets' downloads; their agents are told to stop unless
    /// they also serve the task (its source or a relay), or the task ended
    /// with this (then everyone is told).
    fn terminate_targets(&self, t: &Arc<LiveTransfer>, task: usize, targets: &[u32]) {
        let plan = &t.tasks[task];
        let mut stop: BTreeSet<AgentKey> = BTreeSet::new();
        let task_done = self.change(t, Some("terminated"), |st, effect| {
            for &i in targets {
                if st.close(
                    plan.download(i),
                    Outcome::failed(ERR_TERMINATED, "terminated"),
                    effect,
                ) {
                    stop.extend(plan.targets[i as usize].usable());
                }
            }
            for key in &st.runs[task].relays {
                stop.remove(key);
            }
            effect.tasks_done.contains(&(task as u32))
        });
        if task_done {
            return;
        }
        if let Some(source) = plan.source.key {
            stop.remove(&source);
        }
        self.send_cancel(t, stop, vec![task as u32], "terminated");
    }

    /// Tells every agent of a task to stop it: its source, relays and targets.
    pub(super) fn cancel_task(&self, t: &LiveTransfer, task: u32, reason: &str) {
        let Some(plan) = t.tasks.get(task as usize) else {
            return;
        };
        let mut agents = task_agents(plan);
        agents.extend(t.state.lock().runs[task as usize].relays.iter().copied());
        self.send_cancel(t, agents, vec![task], reason);
    }

    fn send_cancel(
        &self,
        t: &LiveTransfer,
        agents: BTreeSet<AgentKey>,
        tasks: Vec<u32>,
        reason: &str,
    ) {
        let frame = Frame::new(
            MsgType::CancelTransfer,
            0,
            &CancelTransfer {
                transfer_id: t.id.clone(),
                task_indexes: tasks,
                reason: reason.to_string(),
            },
        );
        // A cancel that does not arrive is covered: the agent stops at the
        // transfer's timeout.
        for key in agents {
            self.sender.post(key, frame.clone(), "CancelTransfer");
        }
    }

    /// Closes transfers past their deadline (120) and tells every agent
    /// involved to stop; called every second by the writer.
    pub(super) fn close_overdue(&self, now: Instant) {
        let overdue: Vec<Arc<LiveTransfer>> = self
            .jobs
            .open_jobs()
            .into_iter()
            .filter(|t| t.deadline <= now)
            .collect();
        for t in overdue {
            let why = format!(
                "the transfer did not finish within its timeout of {}; give it a longer timeout_seconds, or fewer or smaller files",
                humantime::format_duration(t.timeout)
            );
            let mut agents: BTreeSet<AgentKey> = BTreeSet::new();
            self.change(&t, None, |st, effect| {
                for (task, plan) in t.tasks.iter().enumerate() {
                    st.close(
                        plan.upload,
                        Outcome::failed(ERR_TIMEOUT, why.clone()),
                        effect,
                    );
                    for i in 0..plan.targets.len() as u32 {
                        st.close(
                            plan.download(i),
                            Outcome::failed(ERR_TIMEOUT, why.clone()),
                            effect,
                        );
                    }
                    agents.extend(task_agents(plan));
                    agents.extend(st.runs[task].relays.iter().copied());
                }
            });
            tracing::warn!(task_id = %t.id, timeout = %humantime::format_duration(t.timeout), "file transfer timed out");
            self.send_cancel(&t, agents, Vec::new(), "timeout");
        }
    }
}

/// The source and targets of a task that take part.
fn task_agents(plan: &TaskPlan) -> BTreeSet<AgentKey> {
    plan.source
        .usable()
        .into_iter()
        .chain(plan.by_key.keys().copied())
        .collect()
}

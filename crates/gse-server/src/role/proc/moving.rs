//! Plugin operations for agents that were moving to another node (K2)
//! when they were sent: refused as `Moving` (by this node's link, or by
//! the node the agent left: `AgentFrames::on_moving`), they never reached
//! the agent, so their entries go back to the queue and wait in
//! [`ProcService::moving`]; once the agent registered again the task is
//! queued for the dispatcher, which finds the agent's new claim. An agent
//! that registers nowhere within [`FOLLOW_WITHIN`] fails them as offline.

use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;

use super::ProcService;
use super::codes::CODE_AGENT_ABNORMAL;
use super::model::{Answer, EntryState, ProcTask};
use crate::cluster::sender::Delivery;

/// How long entries wait for their moving agent: the node it left keeps
/// its claim as long (the link's `MOVE_GRACE`).
const FOLLOW_WITHIN: Duration = Duration::from_secs(30);

impl ProcService {
    /// Puts `indices` of `task`, sent to `agent`'s claim `moved_from` and
    /// refused because the agent is moving, back in the queue to wait for
    /// the agent's next claim.
    pub(super) fn follow(
        &self,
        task: &Arc<ProcTask>,
        indices: Vec<usize>,
        agent: AgentKey,
        moved_from: Delivery,
    ) {
        let requeued: Vec<usize> = {
            let mut st = task.state.lock();
            indices
                .into_iter()
                .filter(|&i| {
                    let entry = &mut st.entries[i].state;
                    let refused = matches!(*entry, EntryState::Sent { agent: a, held, .. } if a == agent && held == moved_from);
                    if refused {
                        *entry = EntryState::Queued;
                    }
                    refused
                })
                .collect()
        };
        if requeued.is_empty() {
            return;
        }
        tracing::info!(task_id = %task.id, agent = %agent, entries = requeued.len(), "the agent is moving to another node; its plugin operations go once it registered there");
        self.moving
            .wait(agent, moved_from, FOLLOW_WITHIN, (task.clone(), requeued));
    }

    /// Queues the tasks whose moving agent registered again, and fails
    /// the entries of those whose agent did not in time.
    pub(super) async fn resend_moved(&self) {
        if self.moving.is_empty() {
            return;
        }
        for ((task, indices), found) in self.moving.arrived(&self.sender).await {
            match found {
                Ok(_) => self.jobs.enqueue(&task),
                Err(e) => {
                    {
                        let mut st = task.state.lock();
                        for i in indices {
                            if st.entries[i].state == EntryState::Queued {
                                let op = &task.ops[st.entries[i].op];
                                let name = &op.targets[st.entries[i].target].0;
                                let answer = Answer::new(CODE_AGENT_ABNORMAL, e.for_host(name));
                                st.entries[i].state = EntryState::done(answer);
                            }
                        }
                    }
                    self.retire(&task);
                }
            }
        }
    }
}

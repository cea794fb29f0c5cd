//! Work for agents that were moving to another node (K2) when it was sent.
//!
//! A hand-over seals the agent's link once nothing is on its way to it;
//! until the agent registered on its new node, a frame for it is refused
//! as `Moving` (by this node's link, or by the holding node through the
//! node link: [`AgentFrames::on_moving`], which also comes when the sealed
//! link ends, for what was sent to it then). It never reached the agent,
//! so nothing ran: the target is kept dispatched, waits in
//! [`TaskService::moving`] and is sent again, to its new claim, by the
//! writer's next round after the agent registered; one that registers
//! nowhere within [`FOLLOW_WITHIN`] fails as offline (117).
//!
//! [`AgentFrames::on_moving`]: crate::role::link::AgentFrames::on_moving

use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;
use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED};
use gse_proto::{Frame, MsgType};

use super::TaskService;
use super::model::LiveTask;
use crate::cluster::sender::{Delivery, SendError};

/// How long a target waits for its moving agent to register again: the
/// holding node keeps the agent's claim as long (`MOVE_GRACE` of the link).
pub(super) const FOLLOW_WITHIN: Duration = Duration::from_secs(30);

impl TaskService {
    /// Keeps `target` (its agent moving, last held under `moved_from`)
    /// for the agent's next claim.
    pub(super) fn follow(
        &self,
        task: &Arc<LiveTask>,
        target: u32,
        agent: AgentKey,
        moved_from: Delivery,
    ) {
        tracing::info!(task_id = %task.id, agent = %agent, "the agent is moving to another node; its task goes once it registered there");
        self.moving
            .wait(agent, moved_from, FOLLOW_WITHIN, (task.clone(), target));
    }

    /// Sends the targets whose agent registered again, and fails those
    /// whose agent did not in time (called every writer round).
    pub(super) async fn resend_moved(&self) {
        if self.moving.is_empty() {
            return;
        }
        for ((task, target), found) in self.moving.arrived(&self.sender).await {
            let name = task.targets[target as usize].bk_agent_id.clone();
            let located = match found {
                Ok(located) => located,
                Err(e) => {
                    self.fail_moved(&task, target, &e.for_host(&name));
                    continue;
                }
            };
            let delivery = located.delivery();
            {
                let mut state = task.state.lock();
                // Cancelled or closed meanwhile: nothing to send.
                if !task.target_unfinished(&state, target) || state.sent_on.contains_key(&target) {
                    continue;
                }
                state.sent_on.insert(target, delivery);
            }
            let Some(body) = task.bodies.lock().get(target as usize).cloned() else {
                continue;
            };
            let frame = Frame {
                msg_type: MsgType::RunScript,
                stream_id: 0,
                body,
            };
            match self.sender.deliver(&located, frame).await {
                Ok(_) => {
                    tracing::info!(task_id = %task.id, agent = %name, "sent the task to the agent on its new node")
                }
                Err(SendError::Moving(agent)) => {
                    // Moving again already: wait for the next claim.
                    task.state.lock().sent_on.remove(&target);
                    self.follow(&task, target, agent, delivery);
                }
                Err(e) => {
                    task.state.lock().sent_on.remove(&target);
                    self.fail_moved(&task, target, &e.for_host(&name));
                }
            }
        }
    }

    fn fail_moved(&self, task: &Arc<LiveTask>, target: u32, why: &str) {
        if task.target_unfinished(&task.state.lock(), target) {
            self.close_target(task, target, STATUS_FAILED, ERR_AGENT_DOWN, why);
        }
    }
}

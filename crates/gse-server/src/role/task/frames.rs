//! What agents send about tasks (`TaskOutput`, `TaskStatus`), and their
//! links ending, applied to the live tasks.
//!
//! The link calls these on its connection tasks, in the order each agent
//! sent its frames, so they must be quick: one map lookup, one short lock.
//! Frames for unknown tasks (finished long ago, or from before a restart)
//! and updates of entries that are already final are ignored.

use std::time::Instant;

use gse_core::AgentKey;
use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED, STATUS_RUNNING};
use gse_proto::link::{TaskOutput, TaskStatus};
use gse_proto::{Frame, MsgType};

use super::TaskService;
use super::create::DEADLINE_GRACE;
use super::model::Update;
use crate::cluster::sender::Delivery;
use crate::role::link::AgentFrames;

/// Highest valid `status` (STATUS_FAILED); anything above is a bad frame.
const MAX_STATUS: i32 = STATUS_FAILED;

impl AgentFrames for TaskService {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        let applied = match frame.msg_type {
            MsgType::TaskOutput => frame
                .decode::<TaskOutput>()
                .map(|out| self.on_output(agent, out)),
            MsgType::TaskStatus => frame
                .decode::<TaskStatus>()
                .map(|status| self.on_status(agent, status)),
            other => {
                tracing::debug!(agent = %agent, msg_type = other.to_u16(), "ignoring a frame type the task role does not handle");
                return;
            }
        };
        if let Err(e) = applied {
            tracing::warn!(agent = %agent, error = %e, "ignoring a task frame that does not decode");
        }
    }

    fn on_moving(&self, agent: AgentKey, moved_from: Delivery) {
        self.claim_ended(agent, moved_from, true);
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        self.claim_ended(agent, ended, false);
    }
}

impl TaskService {
    /// The agent's claim `ended`: every target sent under it closes, but
    /// when the agent left idle for another node (`moved`) one it never
    /// took up follows it there instead. A target sent under a newer claim
    /// (or not sent yet) goes on.
    fn claim_ended(&self, agent: AgentKey, ended: Delivery, moved: bool) {
        for task in self.jobs.open_jobs() {
            let Some(&target) = task.by_agent.get(&agent) else {
                continue;
            };
            let follows = {
                let mut state = task.state.lock();
                if state.sent_on.get(&target) != Some(&ended) {
                    continue;
                }
                // Refused by the node the agent left: it never ran.
                let follows = moved && task.target_untouched(&state, target);
                if follows {
                    state.sent_on.remove(&target);
                }
                follows
            };
            if follows {
                self.follow(&task, target, agent, ended);
            } else {
                self.close_target(
                    &task,
                    target,
                    STATUS_FAILED,
                    ERR_AGENT_DOWN,
                    "agent lost its connection during the task",
                );
            }
        }
    }

    /// The entry an agent's frame is about, if there is one.
    fn entry_of(
        &self,
        agent: AgentKey,
        task_id: &str,
        atomic_id: u32,
    ) -> Option<(std::sync::Arc<super::model::LiveTask>, u32)> {
        let task = self.live(task_id)?;
        let target = *task.by_agent.get(&agent)?;
        let idx = task.entry_index(target, atomic_id)?;
        Some((task, idx))
    }

    fn on_output(&self, agent: AgentKey, out: TaskOutput) {
        let Some((task, idx)) = self.entry_of(agent, &out.task_id, out.atomic_id) else {
            tracing::debug!(agent = %agent, task_id = %out.task_id, "output for a task or entry this node does not hold");
            return;
        };
        // Agents send valid UTF-8; a bad byte is replaced rather than
        // poisoning the byte offsets callers keep.
        let text = String::from_utf8_lossy(&out.data);
        self.change(&task, |state, effect| state.append(idx, &text, effect));
    }

    fn on_status(&self, agent: AgentKey, st: TaskStatus) {
        if !(0..=MAX_STATUS).contains(&st.status) {
            tracing::warn!(agent = %agent, task_id = %st.task_id, status = st.status, "ignoring a task status with an unknown status code");
            return;
        }
        let Some((task, idx)) = self.entry_of(agent, &st.task_id, st.atomic_id) else {
            tracing::debug!(agent = %agent, task_id = %st.task_id, "status for a task or entry this node does not hold");
            return;
        };
        let start_ms = match (st.start_time_ms, st.status) {
            (0, STATUS_RUNNING) => gse_core::now_ms(),
            (ms, _) => ms,
        };
        let running = st.status == STATUS_RUNNING;
        let update = Update {
            status: st.status,
            error_code: st.error_code,
            error_msg: st.error_msg,
            exit_code: st.exit_code,
            start_ms,
            end_ms: st.end_time_ms,
        };
        let n = task.atomic_count.max(1);
        self.change(&task, |state, effect| {
            let started = running && !state.entries[idx as usize].is_final();
            state.update(idx, update, effect);
            if started {
                // The agent may have kept it queued for a while; its time
                // counts from now.
                let deadline = task.run_deadline(idx % n, Instant::now(), DEADLINE_GRACE);
                state.set_run_deadline(idx / n, deadline);
            }
        });
    }
}

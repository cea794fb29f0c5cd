//! What agents send about plugins (`ProcOperateResult`, `ProcStatusReport`,
//! `ProcAlarm`), and their links ending, applied to tasks, the status
//! cache and the alarm role. Called on the link's connection tasks: quick,
//! no awaiting.

use gse_core::AgentKey;
use gse_proto::link::{ProcAlarm, ProcOperateResult, ProcStatusReport};
use gse_proto::{Frame, MsgType};

use super::ProcService;
use super::codes::CODE_AGENT_ABNORMAL;
use super::model::{Answer, EntryState};
use crate::cluster::sender::Delivery;
use crate::role::alarm::{Alarm, AlarmKind};
use crate::role::link::AgentFrames;

impl AgentFrames for ProcService {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        let applied = match frame.msg_type {
            MsgType::ProcOperateResult => frame
                .decode::<ProcOperateResult>()
                .map(|r| self.on_result(agent, r)),
            MsgType::ProcStatusReport => frame
                .decode::<ProcStatusReport>()
                .map(|r| self.status.update(agent, r.full, r.procs)),
            MsgType::ProcAlarm => frame.decode::<ProcAlarm>().map(|a| self.on_alarm(agent, a)),
            other => {
                tracing::debug!(agent = %agent, msg_type = other.to_u16(), "ignoring a frame type the proc role does not handle");
                return;
            }
        };
        if let Err(e) = applied {
            tracing::warn!(agent = %agent, error = %e, "ignoring a plugin frame that does not decode");
        }
    }

    fn on_moving(&self, agent: AgentKey, moved_from: Delivery) {
        // Sent to that claim and not answered: the agent left idle, so
        // none reached it (it runs no operation when it leaves).
        for task in self.jobs.open_jobs() {
            let sent: Vec<usize> = task
                .state
                .lock()
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.state, EntryState::Sent { agent: a, held, .. } if a == agent && held == moved_from))
                .map(|(i, _)| i)
                .collect();
            if !sent.is_empty() {
                self.follow(&task, sent, agent, moved_from);
            }
        }
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        for task in self.jobs.open_jobs() {
            {
                let mut st = task.state.lock();
                for e in st.entries.iter_mut() {
                    if let EntryState::Sent { agent: a, held, .. } = e.state
                        && a == agent
                        && held == ended
                    {
                        e.state = EntryState::done(Answer::new(
                            CODE_AGENT_ABNORMAL,
                            format!("agent {agent} went offline before answering"),
                        ));
                    }
                }
            }
            self.retire(&task);
        }
    }
}

impl ProcService {
    fn on_result(&self, agent: AgentKey, r: ProcOperateResult) {
        if let Some(status) = r.status.clone() {
            self.status.update(agent, false, vec![status]);
        }
        let Some(task) = self.jobs.get(&r.task_id) else {
            tracing::debug!(agent = %agent, task_id = %r.task_id, "result for a proc task this node does not hold");
            return;
        };
        let answer = Answer {
            error_code: r.error_code,
            error_msg: r.error_msg,
            content: r.content,
        };
        let closed = task
            .state
            .lock()
            .close(r.index as usize, Some(agent), answer);
        if !closed {
            tracing::debug!(agent = %agent, task_id = %r.task_id, index = r.index, "ignoring a result for an entry that is closed or not this agent's");
        }
        self.retire(&task);
    }

    fn on_alarm(&self, agent: AgentKey, a: ProcAlarm) {
        let plugin = format!("{}:{}", a.namespace, a.name);
        let Some(alarms) = &self.alarms else {
            tracing::error!(agent = %agent, plugin = %plugin, message = %a.message, "plugin alarm, and this node runs no alarm role to raise it");
            return;
        };
        let message = format!("agent {agent}: {}", a.message);
        alarms.raise(Alarm::about_plugin(
            AlarmKind::PluginFailed,
            &self.node_id,
            agent,
            &plugin,
            message,
        ));
    }
}

//! What agents send about transfers (`FileManifest`, `FileProgress`, direct
//! pieces), and their links ending, applied to the live transfers.
//!
//! The link calls these on its connection tasks, in the order each agent
//! sent its frames, so they must be quick: one map lookup, one short lock.
//! Frames for unknown transfers (finished long ago, or from before a
//! restart), from agents that are not part of the task, and updates of
//! entries that are already final are ignored.

use std::sync::Arc;

use gse_core::AgentKey;
use gse_proto::link::{
    FileManifest, FileProgress, FileState, PeerSet, PieceData, PieceRequest, ProgressSide,
};
use gse_proto::{Frame, MsgType};

use super::codes::*;
use super::model::{LiveTransfer, Outcome, Phase, TransferState};
use super::{FileService, model};
use crate::cluster::sender::Delivery;
use crate::role::link::AgentFrames;

impl AgentFrames for FileService {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        let applied = match frame.msg_type {
            MsgType::FileManifest => frame
                .decode::<FileManifest>()
                .map(|m| self.on_manifest(agent, m)),
            MsgType::FileProgress => frame
                .decode::<FileProgress>()
                .map(|p| self.on_progress(agent, p)),
            MsgType::PieceRequest => frame
                .decode::<PieceRequest>()
                .map(|r| self.on_piece_request(agent, r)),
            MsgType::PieceData => frame
                .decode::<PieceData>()
                .map(|d| self.on_piece_data(agent, d)),
            other => {
                tracing::debug!(agent = %agent, msg_type = other.to_u16(), "ignoring a frame type the file role does not handle");
                return;
            }
        };
        if let Err(e) = applied {
            tracing::warn!(agent = %agent, error = %e, "ignoring a file frame that does not decode");
        }
    }

    fn on_moving(&self, agent: AgentKey, moved_from: Delivery) {
        self.claim_moved(agent, moved_from);
        self.on_disconnect(agent, moved_from);
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        self.relay_disconnect(agent, ended);
        let active = self.jobs.open_jobs();
        for t in active {
            self.transfer_disconnect(&t, agent, ended);
        }
    }
}

impl FileService {
    fn on_progress(&self, agent: AgentKey, p: FileProgress) {
        let Some(t) = self.live(&p.transfer_id) else {
            tracing::debug!(agent = %agent, task_id = %p.transfer_id, "progress for a transfer this node does not hold");
            return;
        };
        let task = p.task_index as usize;
        let Some(plan) = t.tasks.get(task) else {
            return;
        };
        let member = plan.source.key == Some(agent)
            || plan.by_key.contains_key(&agent)
            || t.relay_keys.contains(&agent);
        if member {
            // It has what it was sent for this task: that never follows a move.
            t.state.lock().runs[task].heard.insert(agent);
        }
        match ProgressSide::try_from(p.side) {
            Ok(ProgressSide::SideUpload) if plan.source.usable() == Some(agent) => {
                self.upload_progress(&t, task, p)
            }
            Ok(ProgressSide::SideDownload) => match plan.by_key.get(&agent) {
                Some(slots) => self.download_progress(&t, task, slots, p),
                None if t.relay_keys.contains(&agent) => relay_progress(&t, task, agent, &p),
                None => {
                    tracing::debug!(agent = %agent, task_id = %t.id, task, "progress from an agent that is not a target of the task")
                }
            },
            _ => {
                tracing::debug!(agent = %agent, task_id = %t.id, side = p.side, "ignoring progress with an unknown side or from a stranger")
            }
        }
    }

    fn download_progress(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        slots: &[u32],
        p: FileProgress,
    ) {
        let plan = &t.tasks[task];
        let end = match FileState::try_from(p.state) {
            Ok(FileState::FileRunning) => None,
            Ok(FileState::FileDone) => Some(Outcome::done()),
            Ok(FileState::FileFailed) => {
                let code = failure_code(p.error_code);
                Some(Outcome::failed(code, reported(&p.error_message, code)))
            }
            Ok(FileState::FileCancelled) => {
                Some(Outcome::failed(ERR_TERMINATED, "cancelled on the agent"))
            }
            Err(_) => {
                tracing::warn!(task_id = %t.id, state = p.state, "ignoring progress with an unknown state");
                return;
            }
        };
        self.change(t, Some("finished"), |st, effect| {
            for &s in slots {
                let idx = plan.download(s);
                st.download_progress(idx, &p, effect);
                if let Some(outcome) = &end {
                    st.close(idx, outcome.clone(), effect);
                }
            }
        });
    }

    fn upload_progress(&self, t: &Arc<LiveTransfer>, task: usize, p: FileProgress) {
        let up = t.tasks[task].upload;
        match FileState::try_from(p.state) {
            Ok(FileState::FileRunning) => self.change(t, None, |st, effect| {
                st.upload_speed(up, p.bytes_per_s, effect)
            }),
            Ok(FileState::FileFailed) => {
                // Targets may still finish from their peers; they report
                // what becomes of them.
                let code = failure_code(p.error_code);
                let why = reported(&p.error_message, code);
                tracing::info!(task_id = %t.id, task, code, reason = %why, "the source stopped serving");
                self.change(t, Some("finished"), |st, effect| {
                    st.close(up, Outcome::failed(code, why), effect);
                });
            }
            _ => {}
        }
    }

    /// Ends what was delivered to the agent's claim `ended`: a source's
    /// upload (and, before its manifest, the whole task), a target's
    /// downloads; a relay leaves the peer sets it was in.
    fn transfer_disconnect(&self, t: &Arc<LiveTransfer>, agent: AgentKey, ended: Delivery) {
        let mut lost_relay = Vec::new();
        self.change(t, Some("finished"), |st, effect| {
            for (task, plan) in t.tasks.iter().enumerate() {
                let run = &st.runs[task];
                if run.phase == Phase::Done {
                    continue;
                }
                let source_here =
                    plan.source.usable() == Some(agent) && run.source_conn == Some(ended);
                let sent_here = run.sent_on.get(&agent) == Some(&ended);
                let phase = run.phase;
                if source_here {
                    source_lost(st, plan, phase, effect);
                }
                if sent_here {
                    if let Some(slots) = plan.by_key.get(&agent) {
                        for &s in slots {
                            let why = "agent went offline mid-transfer";
                            st.close(
                                plan.download(s),
                                Outcome::failed(ERR_AGENT_DOWN, why),
                                effect,
                            );
                        }
                    }
                    if st.runs[task].relays.remove(&agent) {
                        lost_relay.push(task);
                    }
                }
            }
        });
        for task in lost_relay {
            tracing::warn!(task_id = %t.id, task, relay = %agent, "a zone-chain relay went offline; its peers are told");
            self.drop_peer(t, task, agent);
        }
    }

    /// Sends a new `PeerSet` to every agent of the task that had `gone` as
    /// a peer.
    fn drop_peer(&self, t: &LiveTransfer, task: usize, gone: AgentKey) {
        let name = gone.to_string();
        let updates: Vec<(AgentKey, Vec<gse_proto::link::Peer>)> = {
            let mut st = t.state.lock();
            st.runs[task]
                .peers
                .iter_mut()
                .filter(|(_, peers)| peers.iter().any(|p| p.agent == name))
                .map(|(key, peers)| {
                    peers.retain(|p| p.agent != name);
                    (*key, peers.clone())
                })
                .collect()
        };
        for (key, peers) in updates {
            let frame = Frame::new(
                MsgType::PeerSet,
                0,
                &PeerSet {
                    transfer_id: t.id.clone(),
                    task_index: task as u32,
                    peers,
                },
            );
            self.sender.post(key, frame, "a new peer set");
        }
    }
}

/// The source's link ended: before its manifest the task cannot start; after
/// it, targets go on with their peers and report what becomes of them.
fn source_lost(
    st: &mut TransferState,
    plan: &model::TaskPlan,
    phase: Phase,
    effect: &mut model::Effect,
) {
    match phase {
        Phase::Manifest => super::create::fail_task(
            st,
            plan,
            ERR_AGENT_DOWN,
            "the source agent went offline before its manifest arrived",
            effect,
        ),
        _ => {
            let why =
                "source agent went offline mid-transfer; targets finish from their peers or fail";
            st.close(plan.upload, Outcome::failed(ERR_AGENT_DOWN, why), effect);
        }
    }
}

fn relay_progress(t: &LiveTransfer, task: usize, agent: AgentKey, p: &FileProgress) {
    match FileState::try_from(p.state) {
        Ok(FileState::FileFailed) => {
            tracing::warn!(task_id = %t.id, task, relay = %agent, code = p.error_code, reason = %p.error_message, "a zone-chain relay failed; its zone's targets fetch from the others or direct")
        }
        Ok(FileState::FileDone) => {
            tracing::debug!(task_id = %t.id, task, relay = %agent, "a zone-chain relay has every piece")
        }
        _ => {}
    }
}

/// An agent's failure message, or one naming the code when it sent none.
fn reported(message: &str, code: i32) -> String {
    match message {
        "" => format!("the agent reported failure {code} without a message; see its log"),
        m => m.to_string(),
    }
}

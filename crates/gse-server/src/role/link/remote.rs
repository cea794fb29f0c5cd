//! The link's side of the node link (T1): frames other nodes send this
//! node's agents, the agents' answers going back, and frames from agents of
//! other nodes answering work this node sent.
//!
//! The node link (`crate::cluster::nodelink`) moves frames between nodes;
//! this file is where they meet this node's agents and roles:
//! - [`LocalAgents`] for the node link: deliver to an agent held here (only
//!   at the claim the sender located it at), hand an answer from an agent
//!   of another node to the role of its family, as a local agent's frame,
//!   and turn an undelivered frame into a lost claim for the roles (what
//!   they delivered to that claim is gone, as when a local link ends).
//! - [`RemoteStreams`], set by the node: asked first for every frame an
//!   agent here sends (an answer on a stream another node opened goes back
//!   there), and told when an agent's link ends.

use std::sync::Arc;

use gse_core::AgentKey;
use gse_proto::Frame;

use super::LinkService;
use crate::cluster::nodelink::{LocalAgents, Refused, Undelivered, UndeliveredCode};
use crate::cluster::sender::{LocalLink, SendError};

/// Streams other nodes opened on this node's agents; see the module doc.
#[async_trait::async_trait]
pub trait RemoteStreams: Send + Sync {
    /// Takes `frame` from `agent` if it answers another node's stream
    /// (waiting while the way back is full); gives it back if not.
    async fn agent_frame(&self, agent: AgentKey, frame: Frame) -> Result<(), Frame>;
    /// The agent's link here ended: its open streams end too.
    fn agent_gone(&self, agent: AgentKey);
    /// The agent left idle for another node (a sealed hand-over): its open
    /// streams end as `Moving`, so what their nodes sent and it never got
    /// follows it there.
    fn agent_moved(&self, agent: AgentKey);
}

impl LinkService {
    /// Lets `remote` take the answers to other nodes' streams.
    pub fn set_remote_streams(&self, remote: Arc<dyn RemoteStreams>) {
        *self.remote.write() = Some(remote);
    }
}

impl LocalAgents for LinkService {
    fn deliver(&self, agent: AgentKey, epoch: u64, frame: Frame) -> Result<(), Refused> {
        let epoch = match epoch {
            0 => match self.sessions.lock().get(&agent) {
                Some(s) => s.epoch,
                None => return Err(not_held(&self.node_id, agent)),
            },
            e => e,
        };
        LocalLink::deliver(self, agent, epoch, frame).map_err(|e| match e {
            SendError::Busy { .. } => Refused {
                code: UndeliveredCode::Busy,
                reason: format!("{e} (on node {})", self.node_id),
            },
            SendError::Moving(_) => Refused {
                code: UndeliveredCode::Moving,
                reason: format!("{e} (it left node {})", self.node_id),
            },
            _ => not_held(&self.node_id, agent),
        })
    }

    fn answer_from_remote(&self, agent: AgentKey, frame: Frame) {
        if let Err(frame) = self.route_to_role(agent, frame) {
            tracing::debug!(agent = %agent, msg_type = frame.msg_type.to_u16(), "ignoring an answer from another node's agent that no role here takes");
        }
    }

    fn undelivered(&self, notice: Undelivered) {
        tracing::info!(agent = %notice.agent, msg_type = notice.msg_type.to_u16(), reason = %notice.reason, "a frame for an agent of another node was not delivered");
        match notice.code {
            UndeliveredCode::Moving => self.notify_roles_moving(notice.agent, notice.epoch),
            _ => self.notify_roles_lost(notice.agent, notice.epoch),
        }
    }
}

fn not_held(node: &str, agent: AgentKey) -> Refused {
    Refused {
        code: UndeliveredCode::NotHeld,
        reason: format!(
            "agent {agent} is no longer connected to node {node} (it reconnected elsewhere or went offline)"
        ),
    }
}

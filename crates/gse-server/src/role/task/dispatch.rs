//! The route step of dispatch (T1): where each target agent is reached from
//! this node, and handing it its frame.
//!
//! [`Dispatch::route`] looks at the agent's record: an agent held by this
//! node's link is [`Route::Local`]; one held by another node is
//! [`Route::Node`]. Sending on a `Node` route (the cluster issue) and a
//! proxy hop (the proxy issue) are new arms here; the task role above and
//! the API never learn how an agent is reached. Until then a `Node` route
//! answers [`Unreachable::OtherNode`].

use std::sync::Arc;

use gse_core::AgentKey;
use gse_core::seams::AgentRecord;
use gse_proto::Frame;

use crate::role::link::{LinkService, SendError};

/// What dispatch needs from a link that holds agents: this node's
/// [`LinkService`], or a fake in tests.
pub trait AgentLink: Send + Sync {
    fn is_connected(&self, key: AgentKey) -> bool;
    /// The id of the agent's current connection, if it is connected.
    fn conn_id(&self, key: AgentKey) -> Option<u64>;
    /// Queues a frame for a connected agent and returns the id of the
    /// connection it went on; the error says why not.
    fn send(&self, key: AgentKey, frame: Frame) -> Result<u64, SendError>;
    /// Largest frame body the link sends to an agent, bytes.
    fn max_frame_bytes(&self) -> usize;
}

impl AgentLink for LinkService {
    fn is_connected(&self, key: AgentKey) -> bool {
        LinkService::is_connected(self, key)
    }

    fn conn_id(&self, key: AgentKey) -> Option<u64> {
        LinkService::conn_id(self, key)
    }

    fn send(&self, key: AgentKey, frame: Frame) -> Result<u64, SendError> {
        self.send_to(key, frame)
    }

    fn max_frame_bytes(&self) -> usize {
        LinkService::max_frame_bytes(self)
    }
}

/// How a target agent is reached from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Connected to this node's link.
    Local,
    /// Held by another server node (forwarding comes with the cluster work).
    Node(String),
}

/// Why a target cannot be given its task; the text becomes its `error_msg`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("agent {0} is unknown to gse; check the agent id, or that the agent has registered")]
    Unknown(String),
    #[error("agent {0} is offline")]
    Offline(String),
    #[error("agent {agent} is held by node {node}, which this node cannot forward to yet")]
    OtherNode { agent: String, node: String },
    #[error("agent {0} is connected, but this node runs no link role to reach it")]
    NoLink(String),
    #[error("agent {agent} could not be sent the task: {reason}")]
    SendFailed { agent: String, reason: String },
}

/// Routes targets and sends them frames.
pub struct Dispatch {
    node_id: String,
    link: Option<Arc<dyn AgentLink>>,
}

impl Dispatch {
    pub fn new(node_id: String, link: Option<Arc<dyn AgentLink>>) -> Self {
        Dispatch { node_id, link }
    }

    /// Where `rec` (named `name` by the caller) is reached, or why it is not.
    pub fn route(&self, name: &str, rec: &AgentRecord) -> Result<Route, Unreachable> {
        if !rec.alive {
            return Err(Unreachable::Offline(name.to_string()));
        }
        if rec.node_id != self.node_id {
            return Ok(Route::Node(rec.node_id.clone()));
        }
        match &self.link {
            Some(link) if link.is_connected(rec.key) => Ok(Route::Local),
            // The record is a moment behind the link: the agent just left.
            Some(_) => Err(Unreachable::Offline(name.to_string())),
            None => Err(Unreachable::NoLink(name.to_string())),
        }
    }

    /// Hands `frame` to the agent along `route`; returns the id of the
    /// local connection it went on.
    pub fn send(
        &self,
        route: &Route,
        name: &str,
        key: AgentKey,
        frame: Frame,
    ) -> Result<u64, Unreachable> {
        match route {
            Route::Local => {
                let link = self
                    .link
                    .as_ref()
                    .ok_or_else(|| Unreachable::NoLink(name.to_string()))?;
                link.send(key, frame).map_err(|e| Unreachable::SendFailed {
                    agent: name.to_string(),
                    reason: e.to_string(),
                })
            }
            Route::Node(node) => Err(Unreachable::OtherNode {
                agent: name.to_string(),
                node: node.clone(),
            }),
        }
    }

    /// Queues a frame for an agent on this node's link, keeping the
    /// link's reason (a full queue is worth retrying, a missing agent not).
    /// Returns the id of the connection it went on.
    pub fn send_local(&self, key: AgentKey, frame: Frame) -> Result<u64, SendError> {
        match &self.link {
            Some(link) => link.send(key, frame),
            None => Err(SendError::NotConnected(key)),
        }
    }

    /// Largest frame body this node's link sends to an agent, bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.link
            .as_ref()
            .map_or(gse_proto::frame::DEFAULT_MAX_BODY, |l| l.max_frame_bytes())
    }

    /// Whether the agent is connected to this node now.
    pub fn is_local(&self, key: AgentKey) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_connected(key))
    }

    /// The id of the agent's current connection to this node, if any.
    pub fn local_conn(&self, key: AgentKey) -> Option<u64> {
        self.link.as_ref().and_then(|l| l.conn_id(key))
    }
}

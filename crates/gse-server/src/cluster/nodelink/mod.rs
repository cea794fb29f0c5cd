//! The node link (T1): how one server node hands work to the node that
//! holds an agent, and how the agent's answers come back.
//!
//! Every node listens on `cluster.node_listen` and advertises it in its
//! registry entry (`NodeInfo::node_addr`). The link is mutual TLS where
//! both sides present a server certificate from the cluster's CA (the
//! certificates `gse-server certs` makes), then a hello naming the node and
//! its cluster (`cluster.zk_root`); frames are node.proto's.
//!
//! Each node writes only on connections it dialed, one per peer node, fed
//! by that node's [`outbox`] queue in order: frames for one agent arrive in
//! the order they were sent. It reads on the connections it accepted.
//! - Sending side: [`NodeLinks::send_to_agent`] queues a `NodeToAgent`;
//!   when it cannot be delivered (the node is unreachable, the agent is no
//!   longer there, its link ended before the stream did) the roles hear it
//!   through [`LocalAgents::undelivered`], never a hang.
//! - Holding side: a `NodeToAgent` goes to the agent on a stream of the
//!   [`relay`]'s choosing; the agent's frames on that stream are taken by
//!   [`NodeLinks::agent_frame`] and go back as `NodeFromAgent`, by header.
//!
//! What the roles do with an agent's frames is theirs: this module moves
//! frames between nodes and never decodes an inner body.

mod conn;
mod outbox;
pub mod relay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;
use gse_core::seams::Registry;
use gse_core::tls::TlsFiles;
use gse_link::{AcceptNames, Acceptor, AcceptorParts, ConnLimits, Dialer, DialerParts};
use gse_proto::link::{NodeRelay, NodeUndelivered};
use gse_proto::{Frame, MsgType};
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use relay::{Origin, Relay};

/// Frames queued for one peer node: a sender finding the queue full waits
/// for room (up to [`QUEUE_WAIT`]), so a burst (a task for 50,000 agents,
/// or their answers) slows down instead of failing or being dropped.
pub const OUTBOX_FRAMES: usize = 8192;
/// Longest a sender waits for room in a peer's queue before that node
/// counts as too slow: the frame then fails (or, for an agent's answer,
/// is dropped and logged; its entry ends at its deadline).
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Why a frame for an agent another node holds was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UndeliveredCode {
    /// The node does not (or no longer) hold the agent.
    NotHeld = 1,
    /// The agent's link on that node is too slow.
    Busy = 2,
    /// The agent's link ended before the stream did.
    LinkEnded = 3,
    /// The holding node could not be reached.
    NodeUnreachable = 4,
    /// The agent's link on that node was handed over (K2): the agent is
    /// on its way to another node, and the frame (or, when the sealed link
    /// ended, whatever was sent on the stream and not taken up) can follow
    /// it.
    Moving = 5,
}

impl UndeliveredCode {
    fn from_wire(n: u32) -> UndeliveredCode {
        match n {
            1 => UndeliveredCode::NotHeld,
            2 => UndeliveredCode::Busy,
            3 => UndeliveredCode::LinkEnded,
            5 => UndeliveredCode::Moving,
            _ => UndeliveredCode::NodeUnreachable,
        }
    }
}

/// A frame this node sent for an agent that did not reach it, or whose
/// stream ended without an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undelivered {
    pub agent: AgentKey,
    /// Type and stream of the frame as this node sent it.
    pub msg_type: MsgType,
    pub stream_id: u64,
    /// The claim epoch this node located the agent at when it sent.
    pub epoch: u64,
    pub code: UndeliveredCode,
    /// Why, in words, naming the node.
    pub reason: String,
}

/// This node's agents, as the node link needs them; the link role
/// implements it.
pub trait LocalAgents: Send + Sync {
    /// Hands `frame` to an agent this node holds (at `epoch`, 0 = any).
    fn deliver(&self, agent: AgentKey, epoch: u64, frame: Frame) -> Result<(), Refused>;
    /// A frame from an agent another node holds, answering one this node
    /// sent it: the roles take it as from a local agent.
    fn answer_from_remote(&self, agent: AgentKey, frame: Frame);
    /// A frame this node sent did not arrive, or its stream ended.
    fn undelivered(&self, notice: Undelivered);
}

/// Why [`LocalAgents::deliver`] could not hand a frame over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: UndeliveredCode,
    pub reason: String,
}

/// Why a frame could not be queued for another node.
#[derive(Debug, thiserror::Error)]
pub enum NodeLinkError {
    #[error(
        "the node link to {node} has had {frames} frames queued for {}: that node or the network to it is too slow",
        humantime::format_duration(*waited)
    )]
    Busy {
        node: String,
        frames: usize,
        waited: Duration,
    },
    #[error("this node is shutting down")]
    ShuttingDown,
}

/// What [`NodeLinks::new`] needs.
pub struct NodeLinkParts {
    pub node_id: String,
    /// `cluster.zk_root`: nodes of another cluster are refused.
    pub cluster: String,
    pub tls_files: TlsFiles,
    /// The name every node's certificate carries (`cluster.node_server_name`).
    pub server_name: String,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Frames queued per peer node ([`OUTBOX_FRAMES`] in a node).
    pub outbox_frames: usize,
    /// How long a sender waits for room in a full queue ([`QUEUE_WAIT`]
    /// in a node).
    pub queue_wait: Duration,
    pub registry: Arc<dyn Registry>,
    pub shutdown: CancellationToken,
}

/// How the node link's accept loop names its connections.
const ACCEPT_NAMES: AcceptNames = AcceptNames {
    one: "node link",
    many: "node links",
    over_caps: "too many node links in their handshake",
    tls_prefix: "node link: ",
    refused_metric: "gse_node_link_connections_refused_total",
    tls_failures_metric: Some("gse_node_link_tls_failures_total"),
};

/// Node links of this node; see the module doc.
pub struct NodeLinks {
    me: String,
    cluster: String,
    dialer: Dialer,
    acceptor: Arc<Acceptor>,
    handshake_timeout: Duration,
    max_frame_bytes: usize,
    outbox_frames: usize,
    queue_wait: Duration,
    /// Peer nodes whose queue stayed full for a whole `queue_wait`: frames
    /// for them fail at once until their queue has room again, so a
    /// stalled peer costs one wait, not one per frame (an agent's answers
    /// wait in its read loop, where waits add up to a heartbeat timeout).
    stalled: Mutex<std::collections::HashSet<String>>,
    /// `stalled` is not empty: the usual send skips its lock.
    any_stalled: std::sync::atomic::AtomicBool,
    registry: Arc<dyn Registry>,
    outboxes: Mutex<HashMap<String, outbox::Outbox>>,
    /// Sending side: per node, the agents (and the claim epoch) this node
    /// opened streams on there, so that when the node leaves the cluster
    /// the work sent to them ends (one entry per agent: bounded).
    opened: Mutex<HashMap<String, HashMap<AgentKey, u64>>>,
    relay: Relay,
    /// Shared with the outboxes, which report frames they could not send.
    local: Arc<RwLock<Option<Arc<dyn LocalAgents>>>>,
    shutdown: CancellationToken,
}

impl NodeLinks {
    pub fn new(parts: NodeLinkParts) -> Result<Arc<Self>, gse_core::tls::TlsError> {
        let acceptor = Acceptor::new(AcceptorParts {
            names: ACCEPT_NAMES,
            tls: gse_core::tls::node_server_config(&parts.tls_files)?,
            tls_files: parts.tls_files.clone(),
            handshake_timeout: parts.handshake_timeout,
            // Nodes are few; these caps only bound strangers' handshakes.
            pending: Arc::new(ConnLimits::new(
                256,
                32,
                gse_link::CapNames {
                    total: "over the node link's pending handshakes",
                    per_ip: "over the node link's pending handshakes per address",
                    gauge: "gse_node_link_pending_handshakes",
                },
            )),
        });
        let dialer = Dialer::new(DialerParts {
            tls: gse_core::tls::client_config(&parts.tls_files)?,
            tls_files: parts.tls_files,
            server_name: parts.server_name,
            bind_ip: None,
            connect_timeout: parts.connect_timeout,
            keepalive: true,
        });
        let links = Arc::new(NodeLinks {
            me: parts.node_id,
            cluster: parts.cluster,
            dialer,
            acceptor,
            handshake_timeout: parts.handshake_timeout,
            max_frame_bytes: parts.max_frame_bytes,
            outbox_frames: parts.outbox_frames,
            queue_wait: parts.queue_wait,
            stalled: Mutex::new(Default::default()),
            any_stalled: std::sync::atomic::AtomicBool::new(false),
            registry: parts.registry,
            outboxes: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            relay: Relay::default(),
            local: Arc::new(RwLock::new(None)),
            shutdown: parts.shutdown,
        });
        tokio::spawn(links.clone().follow_membership());
        Ok(links)
    }

    /// Lets `local` take what other nodes send this node's agents.
    pub fn set_local(&self, local: Arc<dyn LocalAgents>) {
        *self.local.write() = Some(local);
    }

    fn local(&self) -> Option<Arc<dyn LocalAgents>> {
        self.local.read().clone()
    }

    /// Accepts node links until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        tracing::info!(addr = ?listener.local_addr().ok(), "node link listening");
        let links = self.clone();
        let acceptor = self.acceptor.clone();
        acceptor
            .run(listener, self.shutdown.clone(), move |accepted| {
                conn::serve_inbound(links.clone(), accepted)
            })
            .await;
    }

    /// Queues `frame` for `agent`, held by node `node` at `epoch`. Failures
    /// after this returns come back through [`LocalAgents::undelivered`].
    pub async fn send_to_agent(
        &self,
        node: &str,
        agent: AgentKey,
        epoch: u64,
        frame: Frame,
    ) -> Result<(), NodeLinkError> {
        let relay = NodeRelay {
            cloud_id: agent.cloud_id,
            ip: agent.ip.to_string(),
            epoch,
            msg_type: frame.msg_type.to_u16().into(),
            stream_id: frame.stream_id,
            body: frame.body.to_vec(),
        };
        if frame.msg_type.opens_stream() {
            self.opened
                .lock()
                .entry(node.to_string())
                .or_default()
                .insert(agent, epoch);
        }
        self.queue(node, Frame::new(MsgType::NodeToAgent, 0, &relay))
            .await
    }

    /// Holding side: takes a frame from `agent` if it answers a stream
    /// another node opened (sending it back there); gives it back if not.
    /// Waits while the queue to that node is full: the agent's link then
    /// reads no more meanwhile (its answers stay in order, and none is
    /// dropped for a burst).
    pub async fn agent_frame(&self, agent: AgentKey, frame: Frame) -> Result<(), Frame> {
        let Some(origin) = self.relay.answer(agent, frame.stream_id) else {
            return Err(frame);
        };
        if frame.msg_type.ends_stream() {
            self.relay.close(agent, frame.stream_id);
        }
        let back = NodeRelay {
            cloud_id: agent.cloud_id,
            ip: agent.ip.to_string(),
            epoch: 0,
            msg_type: frame.msg_type.to_u16().into(),
            stream_id: origin.stream_id,
            body: frame.body.to_vec(),
        };
        if let Err(e) = self
            .queue(
                &origin.node_id,
                Frame::new(MsgType::NodeFromAgent, 0, &back),
            )
            .await
        {
            metrics::counter!("gse_node_link_answers_dropped_total").increment(1);
            tracing::warn!(agent = %agent, node = %origin.node_id, error = %e, "an agent's answer for another node is dropped");
        }
        Ok(())
    }

    /// Holding side: `agent`'s link ended; the nodes with streams open on
    /// it are told, once per stream.
    pub fn agent_gone(&self, agent: AgentKey) {
        self.streams_end(agent, UndeliveredCode::LinkEnded)
    }

    /// Ends every stream open on `agent`, telling each stream's node why.
    fn streams_end(&self, agent: AgentKey, code: UndeliveredCode) {
        for origin in self.relay.agent_gone(agent) {
            let reason = match code {
                UndeliveredCode::Moving => format!(
                    "the agent left node {} for another node (handed over)",
                    self.me
                ),
                _ => format!(
                    "the agent's link to node {} ended before it answered",
                    self.me
                ),
            };
            let frame = undelivered_frame(agent, &origin, code, reason);
            let tx = match self.outbox(&origin.node_id) {
                Ok(tx) => tx,
                Err(e) => {
                    tracing::warn!(agent = %agent, node = %origin.node_id, error = %e, "cannot tell a node its stream ended");
                    continue;
                }
            };
            // Called as a link ends (no waiting there): a full queue gets
            // the notice from a task of its own.
            if let Err(mpsc::error::TrySendError::Full(frame)) = tx.try_send(frame) {
                let node = origin.node_id.clone();
                tokio::spawn(async move {
                    if tx.send_timeout(frame, QUEUE_WAIT).await.is_err() {
                        tracing::warn!(agent = %agent, node = %node, "cannot tell a node its stream ended: its queue stayed full");
                    }
                });
            }
        }
    }

    /// Relayed streams open on this node now.
    pub fn open_streams(&self) -> usize {
        self.relay.open_streams()
    }

    /// Holding side: a `NodeToAgent` from node `from`.
    async fn on_to_agent(&self, from: &str, relay: NodeRelay) {
        let epoch = relay.epoch;
        let Some((agent, inner)) = inner_frame(from, relay) else {
            return;
        };
        let Some(local) = self.local() else {
            return;
        };
        if !inner.msg_type.opens_stream() {
            // Nothing comes back on its stream: no relay entry; a frame
            // the agent cannot take is only logged (as for a local one).
            if let Err(refused) = local.deliver(agent, epoch, inner) {
                tracing::debug!(agent = %agent, node = %from, reason = %refused.reason, "a one-way frame from another node was not delivered");
            }
            return;
        }
        let origin = Origin {
            node_id: from.to_string(),
            stream_id: inner.stream_id,
            msg_type: inner.msg_type.to_u16(),
            epoch,
        };
        let (stream_id, evicted) = self.relay.open(agent, origin.clone());
        if let Some(old) = evicted {
            metrics::counter!("gse_node_link_streams_evicted_total").increment(1);
            tracing::warn!(agent = %agent, node = %old.node_id, msg_type = old.msg_type, max = relay::MAX_STREAMS_PER_AGENT, "an agent has too many streams open for other nodes; the least recently used is forgotten");
        }
        let frame = Frame {
            msg_type: inner.msg_type,
            stream_id,
            body: inner.body,
        };
        if let Err(refused) = local.deliver(agent, epoch, frame) {
            self.relay.close(agent, stream_id);
            self.tell_undelivered(agent, &origin, refused.code, refused.reason)
                .await;
        }
    }

    async fn tell_undelivered(
        &self,
        agent: AgentKey,
        origin: &Origin,
        code: UndeliveredCode,
        reason: String,
    ) {
        let frame = undelivered_frame(agent, origin, code, reason);
        if let Err(e) = self.queue(&origin.node_id, frame).await {
            tracing::warn!(agent = %agent, node = %origin.node_id, error = %e, "cannot tell a node its frame was not delivered");
        }
    }

    /// Sending side: a `NodeFromAgent` from the holding node.
    fn on_from_agent(&self, from: &str, relay: NodeRelay) {
        let Some((agent, frame)) = inner_frame(from, relay) else {
            return;
        };
        if let Some(local) = self.local() {
            local.answer_from_remote(agent, frame);
        }
    }

    /// Sending side: a `NodeUndelivered` from the holding node.
    fn on_undelivered(&self, from: &str, notice: NodeUndelivered) {
        let Ok(ip) = notice.ip.parse() else {
            tracing::warn!(node = %from, ip = %notice.ip, "a node reported an agent address that does not parse");
            return;
        };
        let Ok(msg_type) = u16::try_from(notice.msg_type) else {
            return;
        };
        if let Some(local) = self.local() {
            local.undelivered(Undelivered {
                agent: AgentKey::new(notice.cloud_id, ip),
                msg_type: MsgType::from_u16(msg_type),
                stream_id: notice.stream_id,
                epoch: notice.epoch,
                code: UndeliveredCode::from_wire(notice.code),
                reason: notice.reason,
            });
        }
    }

    /// Queues `frame` for node `node`, starting its outbox if needed, and
    /// waits (up to `queue_wait`) while that queue is full; a node whose
    /// queue stayed full that long is failed at once until it has room.
    async fn queue(&self, node: &str, frame: Frame) -> Result<(), NodeLinkError> {
        use std::sync::atomic::Ordering;
        let tx = self.outbox(node)?;
        let busy = || NodeLinkError::Busy {
            node: node.to_string(),
            frames: self.outbox_frames,
            waited: self.queue_wait,
        };
        // Room (the usual case) takes no timer.
        let frame = match tx.try_send(frame) {
            Ok(()) => {
                if self.any_stalled.load(Ordering::Relaxed) {
                    self.unstall(node);
                }
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(NodeLinkError::ShuttingDown),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        if self.any_stalled.load(Ordering::Relaxed) && self.stalled.lock().contains(node) {
            return Err(busy());
        }
        match tx.send_timeout(frame, self.queue_wait).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(NodeLinkError::ShuttingDown),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                let mut stalled = self.stalled.lock();
                if stalled.insert(node.to_string()) {
                    tracing::warn!(node, waited = ?self.queue_wait, "the node link to this node took nothing for a whole wait; frames for it fail at once until it has room");
                }
                self.any_stalled.store(true, Ordering::Relaxed);
                Err(busy())
            }
        }
    }

    /// Node `node`'s queue took a frame: it is not stalled (any more).
    fn unstall(&self, node: &str) {
        let mut stalled = self.stalled.lock();
        if stalled.remove(node) {
            tracing::info!(node, "the node link to this node takes frames again");
        }
        self.any_stalled
            .store(!stalled.is_empty(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The queue to node `node`, its outbox started if needed.
    fn outbox(&self, node: &str) -> Result<mpsc::Sender<Frame>, NodeLinkError> {
        if self.shutdown.is_cancelled() {
            return Err(NodeLinkError::ShuttingDown);
        }
        let mut outboxes = self.outboxes.lock();
        Ok(outboxes
            .entry(node.to_string())
            .or_insert_with(|| outbox::Outbox::start(self.outbox_parts(node)))
            .sender())
    }

    /// Node `node` left: the work this node sent its agents there is lost
    /// (their links there ended with it); the roles hear so per agent.
    fn end_work_on(&self, node: &str) {
        let opened = self.opened.lock().remove(node).unwrap_or_default();
        let Some(local) = self.local() else {
            return;
        };
        for (agent, epoch) in opened {
            local.undelivered(Undelivered {
                agent,
                msg_type: MsgType::Other(0),
                stream_id: 0,
                epoch,
                code: UndeliveredCode::NodeUnreachable,
                reason: format!(
                    "node {node}, which held agent {agent}, left the cluster (it stopped or died); what ran there is lost"
                ),
            });
        }
    }

    /// Forgets what belonged to nodes that left the cluster.
    async fn follow_membership(self: Arc<Self>) {
        let mut watch = self.registry.watch();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = watch.changed() => if changed.is_err() { return },
            }
            let live: Vec<String> = watch
                .borrow_and_update()
                .iter()
                .map(|n| n.node_id.clone())
                .collect();
            let gone: Vec<String> = self
                .outboxes
                .lock()
                .keys()
                .filter(|k| !live.contains(k))
                .cloned()
                .collect();
            for node in gone {
                tracing::info!(node = %node, "node left the cluster; its node link is closed");
                self.outboxes.lock().remove(&node);
                self.relay.node_gone(&node);
                self.end_work_on(&node);
            }
        }
    }
}

/// The agent and inner frame a relay message from node `from` carries;
/// `None` (logged) when its address or type is not valid.
fn inner_frame(from: &str, relay: NodeRelay) -> Option<(AgentKey, Frame)> {
    let parsed = relay
        .ip
        .parse()
        .ok()
        .zip(u16::try_from(relay.msg_type).ok());
    let Some((ip, msg_type)) = parsed else {
        tracing::warn!(node = %from, ip = %relay.ip, msg_type = relay.msg_type, "a node relayed a frame with an agent address or type that does not parse; dropped");
        return None;
    };
    Some((
        AgentKey::new(relay.cloud_id, ip),
        Frame {
            msg_type: MsgType::from_u16(msg_type),
            stream_id: relay.stream_id,
            body: relay.body.into(),
        },
    ))
}

#[cfg(test)]
mod tests;

/// Tells node `origin` its frame for `agent` was not delivered.
fn undelivered_frame(
    agent: AgentKey,
    origin: &Origin,
    code: UndeliveredCode,
    reason: String,
) -> Frame {
    let notice = NodeUndelivered {
        cloud_id: agent.cloud_id,
        ip: agent.ip.to_string(),
        msg_type: origin.msg_type.into(),
        stream_id: origin.stream_id,
        reason,
        code: code as u32,
        epoch: origin.epoch,
    };
    Frame::new(MsgType::NodeUndelivered, 0, &notice)
}

/// The sender's way to other nodes' agents: queued (waiting for room
/// while the node's queue is full), a later failure comes back as
/// [`LocalAgents::undelivered`].
#[async_trait::async_trait]
impl crate::cluster::sender::NodeForwarder for NodeLinks {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        epoch: gse_core::seams::directory::Epoch,
        frame: Frame,
    ) -> Result<(), crate::cluster::sender::SendError> {
        self.send_to_agent(node_id, agent, epoch, frame)
            .await
            .map_err(|e| crate::cluster::sender::SendError::RemoteUnreachable {
                agent,
                node: node_id.to_string(),
                reason: e.to_string(),
            })
    }
}

#[async_trait::async_trait]
impl crate::role::link::RemoteStreams for NodeLinks {
    async fn agent_frame(&self, agent: AgentKey, frame: Frame) -> Result<(), Frame> {
        NodeLinks::agent_frame(self, agent, frame).await
    }

    fn agent_gone(&self, agent: AgentKey) {
        NodeLinks::agent_gone(self, agent)
    }

    fn agent_moved(&self, agent: AgentKey) {
        NodeLinks::streams_end(self, agent, UndeliveredCode::Moving)
    }
}

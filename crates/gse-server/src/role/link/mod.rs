//! The link role (C3): holds agent connections over mutual TLS.
//!
//! Start at [`LinkService`]. It accepts connections ([`LinkService::serve`],
//! through `gse_link::Acceptor`) within the pending-handshake caps
//! (`[link] max_pending_handshakes`, in all and per address:
//! `crate::fd_budget`; over them a connection is closed at once) and the
//! TLS handshake (a mismatch is one clear log line, K6), then runs one task
//! per connection ([`connection`]): `Register` (identity by the agent's reported
//! IP, not the socket address, K7; the claim checked against the agent's
//! certificate and the identity's pin, `identity`; then the agent is
//! claimed in the [`AgentDirectory`], which fences it with an epoch), then
//! heartbeats (K3; the claims of every agent held are renewed together,
//! [`renew`])
//! until the link ends or goes silent for `heartbeat_timeout`. Heartbeats
//! reach the state store in batches ([`heartbeats`]). When a link ends the
//! agent's claim is released, it is marked offline and the alarm role is
//! told (K4). Other roles send frames to an agent through the
//! [`Sender`](crate::cluster::sender::Sender), which finds the claim in the
//! directory and hands frames for this node to [`LocalLink::deliver`];
//! frames the link does not handle itself (task output and status) go to
//! the [`AgentFrames`] handler another role sets.
//! It does not dispatch tasks itself.

mod advertise;
mod config;
mod connection;
mod data_drops;
pub mod enroll;
mod handover;
mod heartbeats;
mod identity;
mod probe;
mod proxied;
mod remote;
mod renew;
mod restarts;

pub use remote::RemoteStreams;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use gse_core::AgentKey;
use gse_core::danger::DangerRuleSpec;
use gse_core::seams::{AgentDirectory, Epoch, StateStore};
use gse_core::tls::TlsFiles;
use gse_link::{AcceptNames, Acceptor, AcceptorParts, ConnLimits};
use gse_proto::{Frame, MsgFamily};
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use advertise::AgentPath;
pub use config::LinkConfig;

use crate::cluster::sender::{self, Delivery, LocalLink};
use crate::role::alarm::AlarmService;

/// Frames queued for one agent before `send_to` reports it busy.
const OUTBOUND_QUEUE: usize = 256;

/// The live connection of one agent.
pub(crate) struct Session {
    /// The connection's generation: unique per node run, so a disconnect
    /// or a task names the connection, not just the agent.
    conn_id: u64,
    /// The agent's claim in the directory, made when it registered here:
    /// what roles' deliveries and disconnects name.
    epoch: Epoch,
    /// Boxed frames keep the channel's preallocated block small (tokio
    /// allocates a block of 32 slots per channel up front).
    tx: mpsc::Sender<Box<Frame>>,
    /// Cancel to make the connection task say goodbye and close.
    close: CancellationToken,
    /// The agent's P2P zone (F8) and peer listener, from its Register.
    zone: String,
    p2p_addr: Option<SocketAddr>,
    /// How the agent reached this node (what it was told as its parent).
    path: AgentPath,
    /// The agent's region (K5), from its Register.
    region: String,
    /// Set (with the agent address it goes to) while this node hands the
    /// agent over to another (K2, [`handover`]).
    handover: Arc<handover::Slot>,
    /// The agent follows `HandOver` once idle (link protocol 2 or later);
    /// an older one is moved only by ending its link.
    follows_handover: bool,
    /// Behind a gse-proxy (issue 12): never redirected nor handed over.
    proxied: bool,
    /// Set once the agent is leaving for the node it was handed to: no
    /// more deliveries, as the link ends right after.
    sealed: AtomicBool,
    /// When a role last sent the agent work (unix ms; 0 = never): idle
    /// agents are handed over first.
    last_work_ms: AtomicU64,
    /// A newer claim superseded this one: the link ends as stale.
    stale: AtomicBool,
}

/// Where a connected agent serves file pieces to its peers (F1, F8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub zone: String,
    /// None when the agent does not serve pieces (no P2P listener).
    pub p2p_addr: Option<SocketAddr>,
}

/// One role's share of the frames agents send: the message types of
/// `family` go to `handler`.
struct FrameRoute {
    family: MsgFamily,
    handler: Arc<dyn AgentFrames>,
}

/// Receives what agents send that the link does not handle itself (task
/// output and status), and hears when an agent's link ends.
pub trait AgentFrames: Send + Sync {
    /// A frame from a registered agent, of a type the link does not handle.
    fn on_frame(&self, agent: AgentKey, frame: Frame);
    /// The agent's claim `ended` (its connection here ended or was
    /// replaced; the agent may already be back on a newer one): only what
    /// was delivered to that claim is gone.
    fn on_disconnect(&self, agent: AgentKey, ended: Delivery);
    /// The agent's claim `moved_from` ended by a hand-over (K2): the agent
    /// left idle for another node, so whatever was sent to that claim and
    /// has not started never reached it (a frame on its way was refused)
    /// and can follow it ([`crate::cluster::sender::Followers`]). By
    /// default it is handled as a disconnect.
    fn on_moving(&self, agent: AgentKey, moved_from: Delivery) {
        self.on_disconnect(agent, moved_from);
    }
}

/// Chooses the DataServer an agent sends its data to (D4); asked when an
/// agent registers, for `RegisterAck.data_endpoint`. Moves later are sent
/// by the assigner itself as `DataAssign` frames through [`LinkService::send_to`].
pub trait DataAssigner: Send + Sync {
    /// The `host:port` of the DataServer for `agent`, registering under
    /// the claim `held` over `path`, of `region` (K5); `""` when none is
    /// reachable for it.
    fn assign(&self, agent: AgentKey, held: Delivery, path: AgentPath, region: &str) -> String;

    /// The `host:port` of a DataServer of this node for a gse-proxy that
    /// reached it over `path`: the proxy relays its area's data links
    /// there (C10); `""` when none is reachable for it.
    fn for_proxy(&self, path: AgentPath) -> String;
}

/// Balances agents over the cluster's nodes (K2, K5): asked when an agent
/// registers without having been redirected already.
pub trait Redirector: Send + Sync {
    /// The agent address of the node an agent of `region` should register
    /// with instead of this one; `None` to take it here.
    fn redirect(&self, region: &str) -> Option<String>;
}

/// Why a frame could not be handed to an agent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("agent {0} is not connected to this node")]
    NotConnected(AgentKey),
    #[error("agent {0} has {OUTBOUND_QUEUE} frames queued already; its link is too slow")]
    Busy(AgentKey),
}

/// Shared state of the link role.
pub struct LinkService {
    node_id: String,
    config: LinkConfig,
    /// Accepts connections up to their TLS handshake.
    acceptor: Arc<Acceptor>,
    store: Arc<dyn StateStore>,
    /// Where agents are held: claimed at registration, released at the end.
    directory: Arc<dyn AgentDirectory>,
    alarms: Option<Arc<AlarmService>>,
    /// What agents are told their parent is (A1 parent_ip).
    advertiser: advertise::Advertiser,
    sessions: Mutex<HashMap<AgentKey, Session>>,
    next_conn: AtomicU64,
    /// Last `connected_at_ms` given out (see [`unique_ms`]).
    last_connect_ms: AtomicU64,
    heartbeats: mpsc::Sender<gse_core::seams::HeartbeatUpdate>,
    /// Rules pushed to agents in RegisterAck.
    danger_rules: Vec<gse_proto::link::DangerRule>,
    /// Set while the node starts, read per frame.
    frames: RwLock<Vec<FrameRoute>>,
    /// Set while the node starts when it runs DataServers (D4).
    data_assigner: RwLock<Option<Arc<dyn DataAssigner>>>,
    /// Set while a cluster node starts: streams other nodes opened on this
    /// node's agents (the node link), whose answers go back there.
    remote: RwLock<Option<Arc<dyn RemoteStreams>>>,
    /// Set while a cluster node starts (K2).
    redirector: RwLock<Option<Arc<dyn Redirector>>>,
    /// Sessions asked to move (K2) and not yet gone or lapsed.
    leaving: handover::Leaving,
    /// Agents handed over lately whose claim here is kept a while (K2).
    moved: handover::Moved,
    /// How fast agents ready to move are let go (K2).
    pace: handover::Pace,
    /// Registrations this node decided to take and has not attached yet:
    /// counted in its load, so a burst of agents registering at once is
    /// not all taken on the figure from before the burst.
    joining: AtomicUsize,
    /// Data agents report they dropped (heartbeats), for alarms.
    data_drops: data_drops::DataDrops,
    /// Worker restarts alarmed (issue 13).
    restarts: restarts::Restarts,
    /// Agent enrollment (`[enroll] enabled`): connections without a
    /// certificate may only enroll.
    enroll: Option<Arc<enroll::Enroller>>,
    /// Identity conflicts alarmed lately, so a retrying impostor raises one.
    conflict_alarms: identity::ConflictAlarms,
    /// The proxies linked to this node, for probing their areas' hosts.
    proxy_links: probe::ProxyLinks,
    shutdown: CancellationToken,
}

/// A registration being taken (`LinkService::joining`).
struct Joining<'a>(&'a LinkService);

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        self.0.joining.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the link's accept loop names its connections (log lines, metrics).
const ACCEPT_NAMES: AcceptNames = AcceptNames {
    one: "agent connection",
    many: "agent connections",
    over_caps: "too many connections not registered yet",
    tls_prefix: "",
    refused_metric: "gse_link_connections_refused_total",
    tls_failures_metric: Some("gse_link_tls_failures_total"),
};

/// What `LinkService::new` needs.
pub struct LinkParts {
    pub node_id: String,
    pub config: LinkConfig,
    pub tls_files: TlsFiles,
    pub store: Arc<dyn StateStore>,
    /// The agent directory this node claims its agents in.
    pub directory: Arc<dyn AgentDirectory>,
    pub alarms: Option<Arc<AlarmService>>,
    /// `node.advertise_ip`; unset: each agent is told the address it
    /// connected to.
    pub advertise_ip: Option<IpAddr>,
    /// Dangerous-operation rules agents check before running commands.
    pub danger_rules: Vec<DangerRuleSpec>,
    /// Caps on connections before Register (`FdBudget::link_pending_limits`).
    pub pending: Arc<ConnLimits>,
    /// Agent enrollment, when `[enroll] enabled`.
    pub enroll: Option<enroll::Enroller>,
    pub shutdown: CancellationToken,
}

impl LinkService {
    pub fn new(parts: LinkParts) -> Result<Arc<Self>, gse_core::tls::TlsError> {
        let acceptor = Acceptor::new(AcceptorParts {
            names: ACCEPT_NAMES,
            tls: match parts.enroll {
                Some(_) => gse_core::tls::link_server_config_enrolling(&parts.tls_files)?,
                None => gse_core::tls::link_server_config(&parts.tls_files)?,
            },
            tls_files: parts.tls_files,
            handshake_timeout: parts.config.handshake_timeout,
            pending: parts.pending,
        });
        let heartbeats = heartbeats::start(parts.store.clone(), parts.shutdown.clone());
        let danger_rules = parts
            .danger_rules
            .iter()
            .map(|r| gse_proto::link::DangerRule {
                name: r.name.clone(),
                pattern: r.pattern.clone(),
                action: r.action.as_str().into(),
                description: r.description.clone(),
            })
            .collect();
        Ok(Arc::new(LinkService {
            node_id: parts.node_id,
            config: parts.config,
            acceptor,
            store: parts.store,
            directory: parts.directory,
            alarms: parts.alarms,
            advertiser: advertise::Advertiser::new(parts.advertise_ip),
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            last_connect_ms: AtomicU64::new(0),
            heartbeats,
            danger_rules,
            frames: RwLock::new(Vec::new()),
            data_assigner: RwLock::new(None),
            remote: RwLock::new(None),
            redirector: RwLock::new(None),
            leaving: handover::Leaving::default(),
            moved: handover::Moved::default(),
            pace: handover::Pace::default(),
            joining: AtomicUsize::new(0),
            data_drops: data_drops::DataDrops::default(),
            restarts: restarts::Restarts::default(),
            enroll: parts.enroll.map(Arc::new),
            conflict_alarms: identity::ConflictAlarms::default(),
            proxy_links: probe::ProxyLinks::default(),
            shutdown: parts.shutdown,
        }))
    }

    /// Sends the frames agents send of message types in `family` (and
    /// every disconnect) to `handler`. A type of no role's family is
    /// logged and dropped.
    pub fn add_frame_handler(&self, family: MsgFamily, handler: Arc<dyn AgentFrames>) {
        self.frames.write().push(FrameRoute { family, handler });
    }

    /// Lets `assigner` choose each registering agent's DataServer.
    pub fn set_data_assigner(&self, assigner: Arc<dyn DataAssigner>) {
        *self.data_assigner.write() = Some(assigner);
    }

    /// Lets `redirector` send registering agents to other nodes (K2).
    pub fn set_redirector(&self, redirector: Arc<dyn Redirector>) {
        *self.redirector.write() = Some(redirector);
    }

    /// Lets at most `per_s` agents a second leave for the node they are
    /// handed over to (`[cluster] rebalance_per_s`; 0: no limit).
    pub fn set_handover_rate(&self, per_s: u32) {
        self.pace.set(per_s);
    }

    /// Where an agent of `region` registering here should go instead.
    fn redirect(&self, region: &str) -> Option<String> {
        let redirector = self.redirector.read().clone();
        redirector.and_then(|r| r.redirect(region))
    }

    /// Agents connected now and not being handed over: this node's load
    /// as balancing counts it.
    pub fn balanced(&self) -> usize {
        let sessions = self.sessions.lock();
        (sessions.len() + self.joining.load(Ordering::Relaxed)).saturating_sub(self.leaving.count())
    }

    /// Agents asked to move and not gone yet, per agent address they go
    /// to (K2): balancing counts them there already.
    pub fn handing_over(&self) -> HashMap<String, usize> {
        self.leaving.pending()
    }

    /// The agent addresses agents handed over went to since the last call.
    pub fn handed_over(&self) -> Vec<String> {
        self.leaving.take_departed()
    }

    /// Counts a registration this node takes until the guard goes (once
    /// the agent is attached, or the registration failed).
    fn joining(&self) -> Joining<'_> {
        self.joining.fetch_add(1, Ordering::Relaxed);
        Joining(self)
    }

    /// The DataServer endpoint for a registering agent; `""` when this node
    /// has none (the agent then uses its own `[data] servers`).
    fn data_endpoint(&self, key: AgentKey, epoch: Epoch, path: AgentPath, region: &str) -> String {
        let assigner = self.data_assigner.read().clone();
        assigner
            .map(|a| a.assign(key, Delivery::of_claim(epoch), path, region))
            .unwrap_or_default()
    }

    /// The DataServer a proxy that reached this node over `path` relays
    /// its agents' data links to; `""` when this node has none.
    fn proxy_data_endpoint(&self, path: AgentPath) -> String {
        let assigner = self.data_assigner.read().clone();
        assigner.map(|a| a.for_proxy(path)).unwrap_or_default()
    }

    /// Hands `frame` back to the node whose stream it answers, or to the
    /// role that takes its type; gives it back if none does.
    async fn route_frame(&self, key: AgentKey, frame: Frame) -> Result<(), Frame> {
        let remote = self.remote.read().clone();
        let frame = match remote {
            Some(remote) => match remote.agent_frame(key, frame).await {
                Ok(()) => return Ok(()),
                Err(frame) => frame,
            },
            None => frame,
        };
        self.route_to_role(key, frame)
    }

    /// Hands `frame` to the role that takes its type; gives it back if none does.
    fn route_to_role(&self, key: AgentKey, frame: Frame) -> Result<(), Frame> {
        let family = frame.msg_type.family();
        let handler = self
            .frames
            .read()
            .iter()
            .find(|r| Some(r.family) == family)
            .map(|r| r.handler.clone());
        match handler {
            Some(h) => {
                h.on_frame(key, frame);
                Ok(())
            }
            None => Err(frame),
        }
    }

    /// Tells every role, and the nodes with streams open on the agent, that
    /// the agent's claim `epoch` here is gone.
    fn notify_disconnect(&self, key: AgentKey, epoch: Epoch) {
        let remote = self.remote.read().clone();
        if let Some(remote) = remote {
            remote.agent_gone(key);
        }
        self.notify_roles_lost(key, epoch);
    }

    /// Tells every role that a frame for the agent's claim `epoch` on
    /// another node did not reach it because the agent is moving.
    fn notify_roles_moving(&self, key: AgentKey, epoch: Epoch) {
        self.each_role(|h| h.on_moving(key, Delivery::of_claim(epoch)));
    }

    /// Tells every role that what it delivered to the agent's claim
    /// `epoch` is gone.
    fn notify_roles_lost(&self, key: AgentKey, epoch: Epoch) {
        self.each_role(|h| h.on_disconnect(key, Delivery::of_claim(epoch)));
    }

    /// Calls `f` on every role's frame handler (outside the lock).
    fn each_role(&self, f: impl Fn(&dyn AgentFrames)) {
        let handlers: Vec<_> = self
            .frames
            .read()
            .iter()
            .map(|r| r.handler.clone())
            .collect();
        for h in handlers {
            f(h.as_ref());
        }
    }

    /// The zone and P2P listener of a connected agent.
    pub fn peer_info(&self, key: AgentKey) -> Option<PeerInfo> {
        self.sessions.lock().get(&key).map(|s| PeerInfo {
            zone: s.zone.clone(),
            p2p_addr: s.p2p_addr,
        })
    }

    /// How a connected agent reached this node.
    pub fn path(&self, key: AgentKey) -> Option<AgentPath> {
        self.sessions.lock().get(&key).map(|s| s.path)
    }

    /// A registration time for a new connection: now, but never equal to
    /// one given before, so it names the connection in the store.
    fn connect_stamp(&self) -> u64 {
        unique_ms(&self.last_connect_ms, gse_core::now_ms())
    }

    /// Accepts agent connections until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let pending = self.acceptor.pending();
        tracing::info!(
            max_pending_handshakes = pending.max_total(),
            max_pending_handshakes_per_ip = pending.max_per_ip(),
            handshake_timeout = ?self.config.handshake_timeout,
            "agent link listening"
        );
        tokio::spawn(self.clone().renew_claims());
        let svc = self.clone();
        let acceptor = self.acceptor.clone();
        acceptor
            .run(listener, self.shutdown.clone(), move |accepted| {
                let conn_id = svc.next_conn.fetch_add(1, Ordering::Relaxed);
                connection::run(svc.clone(), accepted, conn_id)
            })
            .await;
    }

    /// Largest frame body sent to or accepted from an agent, bytes
    /// (`link.max_frame_bytes`).
    pub fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes
    }

    /// Number of agents connected now.
    pub fn connected(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Hands a frame to whichever connection of the agent this node has
    /// now, for the link's own concerns (the DataServer assignment, D4);
    /// roles send through the [`Sender`](crate::cluster::sender::Sender).
    pub fn send_to(&self, key: AgentKey, frame: Frame) -> Result<(), SendError> {
        let sessions = self.sessions.lock();
        let session = sessions.get(&key).ok_or(SendError::NotConnected(key))?;
        session.tx.try_send(Box::new(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy(key),
            mpsc::error::TrySendError::Closed(_) => SendError::NotConnected(key),
        })
    }

    /// Records a new session for `key`, closing any older one it replaces
    /// (the same agent again: [`identity`] lets no other agent id here).
    fn attach(&self, key: AgentKey, session: Session) {
        let old = self.sessions.lock().insert(key, session);
        if let Some(old) = old {
            self.left(&old);
            tracing::info!(agent = %key, "a new connection of this agent replaces its older one");
            old.close.cancel();
            // Whatever ran over the old link is gone with it (the agent
            // cancels its tasks when a link ends); what was already sent on
            // the new one is not.
            self.notify_disconnect(key, old.epoch);
        }
        metrics::gauge!("gse_link_agents_connected").set(self.connected() as f64);
    }

    /// A session left the map: no longer counted as leaving, if it was.
    fn left(&self, gone: &Session) {
        self.leaving.left(&gone.handover);
    }

    /// Whether `conn_id`'s session was found stale (a newer claim).
    fn is_stale(&self, key: AgentKey, conn_id: u64) -> bool {
        self.sessions
            .lock()
            .get(&key)
            .is_some_and(|s| s.conn_id == conn_id && s.stale.load(Ordering::Relaxed))
    }

    /// Whether `conn_id`'s session is sealed for a hand-over (it took no
    /// more deliveries once nothing was on its way to the agent).
    fn sealed(&self, key: AgentKey, conn_id: u64) -> bool {
        self.sessions
            .lock()
            .get(&key)
            .is_some_and(|s| s.conn_id == conn_id && s.sealed.load(Ordering::Relaxed))
    }

    /// The agent left idle for another node (a sealed hand-over): roles
    /// here and nodes with streams open on it hear it as moving, so work
    /// that never reached it follows it ([`AgentFrames::on_moving`]).
    fn notify_moved(&self, key: AgentKey, epoch: Epoch) {
        let remote = self.remote.read().clone();
        if let Some(remote) = remote {
            remote.agent_moved(key);
        }
        self.notify_roles_moving(key, epoch);
    }

    /// Forgets the session if it is still `conn_id`'s; true if it was.
    fn detach(&self, key: AgentKey, conn_id: u64) -> bool {
        let mut sessions = self.sessions.lock();
        let current = sessions.get(&key).is_some_and(|s| s.conn_id == conn_id);
        if current && let Some(gone) = sessions.remove(&key) {
            self.left(&gone);
        }
        metrics::gauge!("gse_link_agents_connected").set(sessions.len() as f64);
        current
    }
}

impl LocalLink for LinkService {
    fn deliver(
        &self,
        agent: AgentKey,
        epoch: Epoch,
        frame: Frame,
    ) -> Result<(), sender::SendError> {
        let sessions = self.sessions.lock();
        let Some(session) = sessions.get(&agent).filter(|s| s.epoch == epoch) else {
            return Err(match self.moved.holds(agent, epoch) {
                true => sender::SendError::Moving(agent),
                false => sender::SendError::Stale(agent),
            });
        };
        if session.sealed.load(Ordering::Relaxed) {
            return Err(sender::SendError::Moving(agent));
        }
        session
            .last_work_ms
            .store(gse_core::now_ms(), Ordering::Relaxed);
        session.tx.try_send(Box::new(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => sender::SendError::Busy {
                agent,
                queued: OUTBOUND_QUEUE,
            },
            mpsc::error::TrySendError::Closed(_) => sender::SendError::Stale(agent),
        })
    }

    fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes
    }
}

/// `now`, or one more than the last stamp taken from `last` if that is not
/// later: strictly increasing, even for connections in the same millisecond.
fn unique_ms(last: &AtomicU64, now: u64) -> u64 {
    let prev = last
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |prev| {
            Some(now.max(prev + 1))
        })
        .unwrap_or_else(|prev| prev);
    now.max(prev + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_stamps_never_repeat_within_a_millisecond() {
        let last = AtomicU64::new(0);
        assert_eq!(unique_ms(&last, 100), 100);
        assert_eq!(unique_ms(&last, 100), 101);
        assert_eq!(unique_ms(&last, 100), 102);
        assert_eq!(unique_ms(&last, 500), 500);
    }
}

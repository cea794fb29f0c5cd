//! Cluster membership (K1): the registry this node announces itself to
//! (ZooKeeper when `[cluster] zookeeper` is set, else this node alone) and
//! the loop that keeps its entry and load current (agents, and the
//! DataServers every node's D4 balancer uses).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::seams::{DataServerInfo, NodeInfo, Registry, StaticRegistry};
use tokio_util::sync::CancellationToken;

use super::common::{Base, bind};
use crate::cluster::balance::{self, Balancer};
use crate::cluster::membership::{self, MembershipParts};
use crate::cluster::nodelink::{NodeLinkParts, NodeLinks, OUTBOX_FRAMES, QUEUE_WAIT};
use crate::cluster::sender::Sender;
use crate::config::ServerConfig;
use crate::role::alarm::AlarmService;
use crate::role::data::balance::{Balancer as DataBalancer, ClusterView, ServerLoad, published};
use crate::role::link::LinkService;

/// How often the node refreshes its registry entry even when its load did
/// not change.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
/// How often the node checks its agent count, publishing it when it
/// changed: the other nodes balance on it (K2), so it must not lag long.
const LOAD_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Time for the TCP connect (and again the TLS handshake) to another node.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's addresses, as its registry entry gives them.
pub(super) struct Addresses {
    pub api: Option<SocketAddr>,
    pub agents: Option<SocketAddr>,
    /// The node link's, in a cluster.
    pub node: Option<SocketAddr>,
}

/// Announces this node (its addresses, roles, agent count and
/// DataServers) until it stops.
pub(super) fn spawn_announce(
    config: &ServerConfig,
    base: &mut Base,
    registry: Arc<dyn Registry>,
    addrs: Addresses,
    link: Option<Arc<LinkService>>,
    data_servers: Vec<Arc<ServerLoad>>,
) {
    // What stands for a wildcard DataServer's host: this node's address.
    let node_ip = config
        .node
        .advertise_ip
        .or(addrs.agents.map(|a| a.ip()))
        .or(addrs.node.map(|a| a.ip()));
    let data = PublishedData {
        servers: data_servers,
        node_ip,
    };
    if config.cluster.enabled() {
        data.warn_unpublished();
    }
    base.joins.spawn(announce(
        registry,
        node_info(config, addrs),
        link,
        data,
        base.shutdown.clone(),
    ));
}

/// In a cluster, the D4 balancer (where the link runs) balances over
/// every node's DataServers, as their registry entries publish them.
pub(super) fn join_data_balance(
    config: &ServerConfig,
    base: &Base,
    registry: &Arc<dyn Registry>,
    balancer: &Option<Arc<DataBalancer>>,
) {
    let Some(balancer) = balancer else { return };
    if !config.cluster.enabled() {
        return;
    }
    balancer.join_cluster(ClusterView::new(
        base.node_id.clone(),
        config.node.region.clone(),
        registry.watch(),
        config.data.rebalance_interval,
    ));
}

/// This node's DataServers as its registry entry gives them (D4 across
/// nodes).
struct PublishedData {
    servers: Vec<Arc<ServerLoad>>,
    node_ip: Option<IpAddr>,
}

impl PublishedData {
    fn now(&self) -> Vec<DataServerInfo> {
        self.servers
            .iter()
            .filter_map(|s| published(s, self.node_ip))
            .collect()
    }

    /// Says which DataServers the other nodes' agents are not given.
    fn warn_unpublished(&self) {
        for s in &self.servers {
            if published(s, self.node_ip).is_none() {
                tracing::warn!(
                    server = %s.id,
                    endpoint = %s.endpoint,
                    "this DataServer is not offered to the other nodes' agents: it listens on loopback (or on a \
                     wildcard address with no node address to stand for it); set data.listen to an address agents \
                     reach, or data.advertise_host"
                );
            }
        }
    }
}

/// In a cluster, where this node takes agents: balances them over the
/// cluster's nodes (K2, K5), redirecting registrations and handing agents
/// over at `[cluster] rebalance_per_s`.
pub(super) fn spawn_balance(
    config: &ServerConfig,
    base: &mut Base,
    registry: Arc<dyn Registry>,
    link: &Option<Arc<LinkService>>,
) {
    let Some(link) = link else { return };
    if !config.cluster.enabled() || !config.cluster.balance {
        return;
    }
    let balancer = Balancer::new(base.node_id.clone(), registry, link.clone());
    link.set_redirector(balancer.clone());
    link.set_handover_rate(config.cluster.rebalance_per_s);
    base.joins.spawn(balance::run(
        balancer,
        config.cluster.rebalance_per_s,
        base.shutdown.clone(),
    ));
}

/// In a cluster: adopts the agents of nodes that leave (`membership`),
/// listens on `cluster.node_listen` for the other nodes and
/// lets the sender reach their agents (T1); returns the address advertised
/// to them. A single node has no node link.
pub(super) async fn start_node_link(
    config: &ServerConfig,
    base: &mut Base,
    registry: Arc<dyn Registry>,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
    alarms: &Option<Arc<AlarmService>>,
) -> Result<Option<SocketAddr>> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    membership::spawn(MembershipParts {
        node_id: base.node_id.clone(),
        registry: registry.clone(),
        directory: base.directory.clone(),
        store: base.store.clone(),
        alarms: alarms.clone(),
        confirm_after: config.cluster.session_timeout,
        shutdown: base.shutdown.clone(),
    });
    let listener = bind(
        config.cluster.node_listen,
        "other nodes",
        "cluster.node_listen",
    )
    .await?;
    let advertised = config.agent_addr(listener.local_addr()?);
    let links = NodeLinks::new(NodeLinkParts {
        node_id: base.node_id.clone(),
        cluster: config.cluster.zk_root.clone(),
        tls_files: config.tls.clone(),
        server_name: config.cluster.node_server_name.clone(),
        connect_timeout: NODE_CONNECT_TIMEOUT,
        handshake_timeout: config.link.handshake_timeout,
        max_frame_bytes: config.link.max_frame_bytes,
        outbox_frames: OUTBOX_FRAMES,
        queue_wait: QUEUE_WAIT,
        registry,
        shutdown: base.shutdown.clone(),
    })
    .context("cannot load the TLS material in [tls] for the node link")?;
    if let Some(link) = link {
        links.set_local(link.clone());
        link.set_remote_streams(links.clone());
    }
    sender.set_forwarder(links.clone());
    base.joins.spawn(links.serve(listener));
    Ok(Some(advertised))
}

/// ZooKeeper when `[cluster] zookeeper` is set (K1), else this node alone.
pub(super) async fn start_registry(
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Registry>> {
    if !config.cluster.enabled() {
        return Ok(Arc::new(StaticRegistry::new(Vec::new())));
    }
    let registry = crate::cluster::ZkRegistry::start(config.cluster.clone(), shutdown.clone())
        .await
        .context("cannot join the cluster in [cluster]")?;
    Ok(registry)
}

fn node_info(config: &ServerConfig, addrs: Addresses) -> NodeInfo {
    let roles = config
        .node
        .roles
        .iter()
        .map(|r| format!("{r:?}").to_lowercase())
        .collect();
    NodeInfo {
        node_id: config.node.id.clone(),
        region: config.node.region.clone(),
        roles,
        agent_addr: addrs.agents.map(|a| a.to_string()).unwrap_or_default(),
        api_addr: addrs.api.map(|a| a.to_string()).unwrap_or_default(),
        agents: 0,
        node_addr: addrs.node.map(|a| a.to_string()).unwrap_or_default(),
        data_servers: Vec::new(),
    }
}

/// Keeps this node's registry entry and its load current.
async fn announce(
    registry: Arc<dyn Registry>,
    mut me: NodeInfo,
    link: Option<Arc<LinkService>>,
    data: PublishedData,
    shutdown: CancellationToken,
) {
    let mut published: Option<(u64, Vec<DataServerInfo>, tokio::time::Instant)> = None;
    loop {
        let agents = link.as_ref().map_or(0, |l| l.connected() as u64);
        let data_servers = data.now();
        let due = published.as_ref().is_none_or(|(count, servers, at)| {
            *count != agents || *servers != data_servers || at.elapsed() >= ANNOUNCE_EVERY
        });
        if due {
            me.agents = agents;
            me.data_servers = data_servers.clone();
            if let Err(e) = registry.announce(me.clone()).await {
                tracing::warn!(registry = registry.kind(), error = %e, "cannot announce this node");
            }
            // Tried: again on the next change or in ANNOUNCE_EVERY, not
            // every second while the registry is down.
            published = Some((agents, data_servers, tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LOAD_CHECK_EVERY) => {}
        }
    }
}

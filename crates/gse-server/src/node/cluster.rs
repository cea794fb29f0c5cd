//! Cluster membership (K1): the registry this node announces itself to
//! (ZooKeeper when `[cluster] zookeeper` is set, else this node alone) and
//! the loop that keeps its entry and load current.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::seams::{NodeInfo, Registry, StaticRegistry};
use tokio_util::sync::CancellationToken;

use super::common::Base;
use crate::config::ServerConfig;
use crate::role::link::LinkService;

/// How often the node refreshes its registry entry (load for balancing).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// Announces this node (its addresses, roles and agent count) until it stops.
pub(super) fn spawn_announce(
    config: &ServerConfig,
    base: &mut Base,
    registry: Arc<dyn Registry>,
    api: Option<SocketAddr>,
    agents: Option<SocketAddr>,
    link: Option<Arc<LinkService>>,
) {
    base.joins.spawn(announce(
        registry,
        node_info(config, api, agents),
        link,
        base.shutdown.clone(),
    ));
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

fn node_info(
    config: &ServerConfig,
    api: Option<SocketAddr>,
    agents: Option<SocketAddr>,
) -> NodeInfo {
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
        agent_addr: agents.map(|a| a.to_string()).unwrap_or_default(),
        api_addr: api.map(|a| a.to_string()).unwrap_or_default(),
        agents: 0,
        node_addr: String::new(),
    }
}

/// Keeps this node's registry entry and its load current.
async fn announce(
    registry: Arc<dyn Registry>,
    mut me: NodeInfo,
    link: Option<Arc<LinkService>>,
    shutdown: CancellationToken,
) {
    loop {
        me.agents = link.as_ref().map_or(0, |l| l.connected() as u64);
        if let Err(e) = registry.announce(me.clone()).await {
            tracing::warn!(registry = registry.kind(), error = %e, "cannot announce this node");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
    }
}

//! The data path: the data routes (D5, where the API, the link or the data
//! role runs), the system snapshot cache (D3) and the DataServers (C5, D4)
//! where `[node] roles` selects the data role, and the D4 balancer where
//! the link runs (with DataServers, or without in a cluster: the other
//! nodes' then). Started before the link serves, so that registering
//! agents are given a DataServer.

use std::sync::Arc;

use anyhow::{Context, Result};
use gse_core::seams::StateStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::common::Base;
use crate::config::{Role, ServerConfig};
use crate::role::data::balance::Balancer;
use crate::role::data::routes::{RouteService, RouteTable};
use crate::role::data::sink::SinkContext;
use crate::role::data::snapshot::SnapshotCache;
use crate::role::data::{DataParts, DataService, DataTap, start_balancer};
use crate::role::link::LinkService;

/// The data-path parts this node runs.
pub(super) struct DataRoles {
    pub routes: Option<Arc<RouteService>>,
    pub snapshots: Option<Arc<SnapshotCache>>,
    pub servers: Option<DataService>,
    /// Where the link runs: assigns agents their DataServer (D4), this
    /// node's or, in a cluster, any node's.
    pub balancer: Option<Arc<Balancer>>,
}

/// How often a cluster node reads the shared routes for other nodes'
/// changes.
const ROUTES_FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads the routes (following other nodes' changes in a cluster), starts
/// the snapshot cache and the DataServers.
pub(super) async fn start(
    config: &ServerConfig,
    base: &mut Base,
    link: &Option<Arc<LinkService>>,
) -> Result<DataRoles> {
    let routes = start_route_service(config, &base.store).await?;
    if let Some(routes) = &routes
        && config.cluster.enabled()
    {
        // Other nodes' APIs change the shared routes too (D5 across nodes).
        base.joins.spawn(
            routes
                .clone()
                .follow(ROUTES_FOLLOW_EVERY, base.shutdown.clone()),
        );
    }
    // Taps see every record of their data id (the snapshot cache, D3).
    let snapshots = start_snapshot_cache(config, &base.shutdown, &mut base.joins);
    if let (Some(cache), Some(shared)) = (&snapshots, &base.shared_snapshots)
        && config.cluster.enabled()
    {
        // The API of any node serves snapshots another node's DataServer got.
        cache.share(shared.clone(), &mut base.joins, base.shutdown.clone());
    }
    let data_taps: Vec<Arc<dyn DataTap>> = snapshots
        .iter()
        .map(|c| c.clone() as Arc<dyn DataTap>)
        .collect();
    let servers = if config.has_role(Role::Data) {
        let parts = DataParts {
            node_id: base.node_id.clone(),
            config: config.data.clone(),
            tls_files: config.tls.clone(),
            routes: routes
                .as_ref()
                .map(|r| r.table())
                .unwrap_or_else(RouteTable::default),
            taps: data_taps,
            store: base.store.clone(),
            pending: base.budget.data_pending_limits(),
            link: link.clone(),
            shutdown: base.shutdown.clone(),
        };
        Some(
            DataService::start(parts, &mut base.joins)
                .await
                .context("cannot start the data role")?,
        )
    } else {
        None
    };
    let balancer = match (&servers, link) {
        (Some(servers), _) => servers.balancer.clone(),
        // A cluster node without DataServers gives its agents the others'.
        (None, Some(link)) if config.cluster.enabled() => Some(start_balancer(
            Vec::new(),
            link,
            config.data.rebalance_interval,
            &base.shutdown,
            &mut base.joins,
        )),
        (None, _) => None,
    };
    Ok(DataRoles {
        routes,
        snapshots,
        servers,
        balancer,
    })
}

/// Loads the data routes where the API or the link runs: the API changes
/// them, the data path reads their table (`RouteService::table`).
async fn start_route_service(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
) -> Result<Option<Arc<RouteService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link) || config.has_role(Role::Data)) {
        return Ok(None);
    }
    let sinks = SinkContext {
        data_dir: config.node.data_dir.clone(),
    };
    let svc = RouteService::start(store.clone(), sinks)
        .await
        .context("cannot load the data routes from the state store")?;
    Ok(Some(svc))
}

/// The system snapshot cache (D3) where the data role runs: a tap on the
/// DataServers, read by the API. Its sweeper is spawned into `tasks`.
fn start_snapshot_cache(
    config: &ServerConfig,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Option<Arc<SnapshotCache>> {
    if !config.has_role(Role::Data) {
        return None;
    }
    let cache = Arc::new(SnapshotCache::new(
        config.data.snapshot_data_id,
        config.data.snapshot.clone(),
    ));
    tasks.spawn(cache.clone().run_sweeper(shutdown.clone()));
    Some(cache)
}

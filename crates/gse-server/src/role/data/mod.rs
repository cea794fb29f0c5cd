//! The data role (C5, D4, D5, C9): DataServers that take agents' data links
//! and deliver each batch to the sinks of its data id's routes.
//!
//! Start at [`DataService::start`]: it binds one [`server::DataServer`] per
//! `[data] listen` address (several in one process share the load), each
//! handing batches to the shared [`batch::BatchHandler`] (route table from
//! [`routes`], sinks from [`sink`], [`DataTap`]s such as the [`snapshot`]
//! cache) and acking a batch only when every sink stored it. Where the link
//! role runs, [`balance::Balancer`] assigns each registering agent the
//! least-loaded DataServer and moves agents every `rebalance_interval`
//! (D4), over every node's DataServers in a cluster. Metrics are in
//! [`metrics`]. The route and stream_to APIs are in
//! `role::api::data_routes`; the agent side is `gse_agent::data`.

pub mod balance;
pub mod batch;
pub mod config;
pub mod endpoint;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod sink;
pub mod snapshot;

use std::sync::Arc;

use anyhow::{Context, Result};
use gse_core::seams::Record;
use gse_core::tls::TlsFiles;
use gse_proto::MsgFamily;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::DataConfig;
pub use endpoint::DataEndpoint;

use self::balance::{Balancer, ServerLoad};
use self::batch::BatchHandler;
use self::routes::RouteTable;
use self::server::DataServer;
use crate::role::link::LinkService;
use gse_link::{Acceptor, AcceptorParts, ConnLimits};

/// Sees every record of one data id as it arrives, routed or not (the
/// snapshot cache is one). Must be quick: it runs on the data path.
pub trait DataTap: Send + Sync {
    /// The data id this tap wants.
    fn data_id(&self) -> u32;
    /// One record of that data id from agent `source` (`cloud:ip`).
    fn observe(&self, source: &str, record: &Record);
}

/// What [`DataService::start`] needs.
pub struct DataParts {
    pub node_id: String,
    pub config: DataConfig,
    pub tls_files: TlsFiles,
    pub routes: RouteTable,
    pub taps: Vec<Arc<dyn DataTap>>,
    /// Where identity pins are checked (data links claim identities too).
    pub store: Arc<dyn gse_core::seams::StateStore>,
    /// Caps on data links before DataHello, shared by every DataServer
    /// (`FdBudget::data_pending_limits`).
    pub pending: Arc<ConnLimits>,
    /// The link role of this node, if it runs: then agents are assigned
    /// and rebalanced here.
    pub link: Option<Arc<LinkService>>,
    pub shutdown: CancellationToken,
}

/// Starts the D4 balancer of `link` over `servers` (this node's
/// DataServers, none for a cluster node without the data role): it assigns
/// registering agents and rebalances every `interval` until `shutdown`.
pub fn start_balancer(
    servers: Vec<Arc<ServerLoad>>,
    link: &Arc<LinkService>,
    interval: std::time::Duration,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Arc<Balancer> {
    let b = Balancer::new(servers, link.clone());
    link.set_data_assigner(b.clone());
    // Agents never send this family: the route only delivers disconnects.
    link.add_frame_handler(MsgFamily::DataAssign, b.clone());
    tasks.spawn(b.clone().run(interval, shutdown.clone()));
    b
}

/// Measures `servers`' loads every `interval` until `shutdown`.
async fn sample_loads(
    servers: Vec<Arc<ServerLoad>>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => servers.iter().for_each(|s| s.sample()),
        }
    }
}

/// The started DataServers.
pub struct DataService {
    /// Each DataServer's endpoint as agents are told, in `[data] listen`
    /// order.
    pub endpoints: Vec<DataEndpoint>,
    pub servers: Vec<Arc<DataServer>>,
    pub balancer: Option<Arc<Balancer>>,
}

// === impl DataService ===

impl DataService {
    /// Binds every DataServer, wires the balancer into the link and spawns
    /// the listeners (and the rebalance loop) into `tasks`.
    pub async fn start(parts: DataParts, tasks: &mut JoinSet<()>) -> Result<DataService> {
        let tls = gse_core::tls::link_server_config(&parts.tls_files)
            .context("cannot load the TLS material in [tls] for the DataServers")?;
        let handler = BatchHandler::new(parts.routes, parts.taps);
        let mut servers = Vec::new();
        let mut listeners = Vec::new();
        for (i, addr) in parts.config.listen.iter().enumerate() {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for data links on {addr}; set data.listen to free addresses or stop the process using it")
            })?;
            let bound = listener.local_addr()?;
            let endpoint = DataEndpoint::new(&parts.config, bound);
            let load = Arc::new(ServerLoad::new(
                i,
                format!("{}/data{i}", parts.node_id),
                endpoint,
            ));
            let acceptor = Acceptor::new(AcceptorParts {
                names: server::ACCEPT_NAMES,
                tls: tls.clone(),
                tls_files: parts.tls_files.clone(),
                handshake_timeout: parts.config.handshake_timeout,
                pending: parts.pending.clone(),
            });
            servers.push(Arc::new(DataServer {
                load,
                acceptor,
                handler: handler.clone(),
                config: parts.config.clone(),
                store: parts.store.clone(),
                shutdown: parts.shutdown.clone(),
            }));
            listeners.push(listener);
        }
        for (svc, listener) in servers.iter().zip(listeners) {
            tasks.spawn(svc.clone().serve(listener));
        }
        let loads: Vec<Arc<ServerLoad>> = servers.iter().map(|s| s.load.clone()).collect();
        let interval = parts.config.rebalance_interval;
        let balancer = match parts.link {
            Some(link) => Some(start_balancer(
                loads,
                &link,
                interval,
                &parts.shutdown,
                tasks,
            )),
            None => {
                // No link here: the loads are measured for the registry
                // entry only (other nodes' agents send here, D4).
                tasks.spawn(sample_loads(loads, interval, parts.shutdown.clone()));
                None
            }
        };
        Ok(DataService {
            endpoints: servers.iter().map(|s| s.load.endpoint.clone()).collect(),
            servers,
            balancer,
        })
    }
}

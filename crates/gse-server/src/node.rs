//! A running gse-server node: the seams built from the config and the roles
//! started over them.
//!
//! [`Node::start`] opens the state store (embedded, or Redis), seeds
//! the configured apps, starts the alarm, link and API roles that
//! `[node] roles` selects, and the task and file roles wherever the API or
//! the link runs (they take script tasks and file transfers from the API to
//! agents over the link and receive their results), and announces the node to the registry with its
//! agent count. Before the link serves, the alarm role picks up the agents
//! known before this start, so that one that does not come back raises
//! `agent_lost` (`role::alarm::lost`). [`Node::stop`] cancels everything and waits for the roles to
//! finish. Addresses actually bound (port 0 allowed) are in the `Node`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::seams::{NodeInfo, Registry, StateStore, StaticRegistry};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Role, ServerConfig};
use crate::fd_budget::{self, FdBudget};
use crate::role::alarm::AlarmService;
use crate::role::api::{self, ApiContext};
use crate::role::data::routes::{RouteService, RouteTable};
use crate::role::data::sink::SinkContext;
use crate::role::data::snapshot::SnapshotCache;
use crate::role::data::{DataParts, DataService, DataTap};
use crate::role::file::{FileLink, FileParts, FileService};
use crate::role::link::{LinkParts, LinkService};
use crate::role::proc::{ProcParts, ProcService};
use crate::role::task::{AgentLink, TaskParts, TaskService};

/// How often the node refreshes its registry entry (load for balancing).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// A started node.
pub struct Node {
    pub config: ServerConfig,
    /// Where the HTTP API listens, if this node runs it.
    pub api_addr: Option<SocketAddr>,
    /// Where agents connect, as advertised to them, if this node runs the link.
    pub agent_addr: Option<SocketAddr>,
    pub store: Arc<dyn StateStore>,
    pub link: Option<Arc<LinkService>>,
    pub alarms: Option<Arc<AlarmService>>,
    pub tasks: Option<Arc<TaskService>>,
    pub files: Option<Arc<FileService>>,
    /// Data routes and the live route table (D5), where the API or the link runs.
    pub routes: Option<Arc<RouteService>>,
    pub procs: Option<Arc<ProcService>>,
    /// The DataServers (C5, D4), if this node runs the data role.
    pub data: Option<DataService>,
    shutdown: CancellationToken,
    joins: JoinSet<()>,
}

async fn bind(addr: SocketAddr, what: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; set {key} to a free address or stop the process using it")
    })
}

impl Node {
    /// Builds the seams and starts the roles; returns once every listener
    /// is bound.
    pub async fn start(config: ServerConfig) -> Result<Node> {
        prepare_data_dir(&config.node.data_dir)?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let store = open_store(&config).await?;
        let node_id = config.node.id.clone();

        let alarms = if config.has_role(Role::Alarm) {
            let svc = AlarmService::start(
                config.alarm.clone(),
                node_id.clone(),
                store.clone(),
                shutdown.clone(),
            )
            .context("cannot start the alarm role")?;
            Some(svc)
        } else {
            None
        };

        let budget = FdBudget::plan(&config, fd_budget::open_files_limit());
        tracing::info!(
            open_files = budget.open_files,
            api_connections = budget.api.total,
            link_pending_handshakes = budget.link_pending.total,
            data_pending_handshakes = budget.data_pending.total,
            "open files shared among unauthenticated connections"
        );
        let danger_rules = config
            .danger
            .resolve()
            .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
        let (link, agent_listener) = if config.has_role(Role::Link) {
            let listener = bind(config.link.listen, "agents", "link.listen").await?;
            let parent = config.agent_addr(listener.local_addr()?);
            let link = LinkService::new(LinkParts {
                node_id: node_id.clone(),
                config: config.link.clone(),
                tls_files: config.tls.clone(),
                store: store.clone(),
                alarms: alarms.clone(),
                advertise_ip: config.node.advertise_ip,
                danger_rules: danger_rules.clone(),
                pending: budget.link_pending_limits(),
                shutdown: shutdown.clone(),
            })
            .context("cannot load the TLS material in [tls]")?;
            (Some(link), Some((listener, parent)))
        } else {
            (None, None)
        };

        let danger = Arc::new(
            gse_core::danger::DangerPolicy::new(&danger_rules)
                .context("cannot use the dangerous-operation rules of [danger]")?,
        );
        let task_service = start_task_role(&config, &store, &link, &alarms, danger_rules).await?;
        if let Some(svc) = &task_service {
            tasks.spawn(svc.clone().run(shutdown.clone()));
        }
        let file_service = start_file_role(&config, &store, &link).await?;
        if let Some(svc) = &file_service {
            tasks.spawn(svc.clone().run(shutdown.clone()));
        }

        let route_service = start_route_service(&config, &store).await?;
        // Taps see every record of their data id (the snapshot cache, D3).
        let snapshots = start_snapshot_cache(&config, &shutdown, &mut tasks);
        let data_taps: Vec<Arc<dyn DataTap>> = snapshots
            .iter()
            .map(|c| c.clone() as Arc<dyn DataTap>)
            .collect();
        // Before the link serves: registering agents are given a DataServer.
        let data_service = if config.has_role(Role::Data) {
            let parts = DataParts {
                node_id: node_id.clone(),
                config: config.data.clone(),
                tls_files: config.tls.clone(),
                routes: route_service
                    .as_ref()
                    .map(|r| r.table())
                    .unwrap_or_else(RouteTable::default),
                taps: data_taps,
                store: store.clone(),
                pending: budget.data_pending_limits(),
                link: link.clone(),
                shutdown: shutdown.clone(),
            };
            Some(
                DataService::start(parts, &mut tasks)
                    .await
                    .context("cannot start the data role")?,
            )
        } else {
            None
        };

        let proc_service = start_proc_role(&config, &store, &link, &alarms, danger);
        if let Some(svc) = &proc_service {
            tasks.spawn(svc.clone().run(shutdown.clone()));
        }

        // Before the link serves: an agent that reconnects at once finds its
        // grace already running and cancels it.
        if let (Some(alarms), Some(_)) = (&alarms, &link) {
            alarms.resume_after_restart().await;
        }
        let agent_addr = match (&link, agent_listener) {
            (Some(link), Some((listener, parent))) => {
                tasks.spawn(link.clone().serve(listener));
                Some(parent)
            }
            _ => None,
        };

        let registry = start_registry(&config, &shutdown).await?;
        let api_addr = if config.has_role(Role::Api) {
            let listener = bind(config.api.listen, "the HTTP API", "api.listen").await?;
            let addr = listener.local_addr()?;
            let ctx = ApiContext {
                metrics: Some(crate::telemetry::metrics_handle()),
                tasks: task_service.clone(),
                files: file_service.clone(),
                routes: route_service.clone(),
                procs: proc_service.clone(),
                snapshots: snapshots.clone(),
                registry: Some(registry.clone()),
                ..ApiContext::new(store.clone(), config.api.clone())
            };
            let token = shutdown.clone();
            let limits = budget.api_limits();
            tasks.spawn(async move {
                if let Err(e) = api::serve(listener, ctx, limits, token).await {
                    tracing::error!(error = %e, "the HTTP API stopped with an error");
                }
            });
            Some(addr)
        } else {
            None
        };

        tasks.spawn(announce(
            registry,
            node_info(&config, api_addr, agent_addr),
            link.clone(),
            shutdown.clone(),
        ));

        tracing::info!(node = %node_id, api = ?api_addr, agents = ?agent_addr, store = store.kind(), "gse-server node started");
        Ok(Node {
            config,
            api_addr,
            agent_addr,
            store,
            link,
            alarms,
            tasks: task_service,
            files: file_service,
            routes: route_service,
            procs: proc_service,
            data: data_service,
            shutdown,
            joins: tasks,
        })
    }

    /// Cancelling this token stops the node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every role, waiting up to `grace` for them to finish.
    pub async fn stop(mut self, grace: Duration) {
        self.shutdown.cancel();
        let all = async { while self.joins.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("some roles did not stop within {grace:?}; exiting anyway");
        }
    }
}

/// Starts the task role where the API or the link runs (it takes script
/// tasks from the API to this node's agents and their results back) and
/// hands it the link's task frames. The caller spawns its writer.
async fn start_task_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    alarms: &Option<Arc<AlarmService>>,
    danger_rules: Vec<gse_core::danger::DangerRuleSpec>,
) -> Result<Option<Arc<TaskService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return Ok(None);
    }
    let svc = TaskService::start(TaskParts {
        node_id: config.node.id.clone(),
        config: config.task.clone(),
        store: store.clone(),
        link: link.clone().map(|l| l as Arc<dyn AgentLink>),
        danger_rules,
        alarms: alarms.clone(),
    })
    .await
    .context("cannot start the task role")?;
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::Task, svc.clone());
    }
    Ok(Some(svc))
}

/// Starts the file role where the API or the link runs (it takes file
/// transfers from the API to this node's agents and relays their direct
/// pieces) and hands it the link's file frames. The caller spawns its
/// writer.
async fn start_file_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
) -> Result<Option<Arc<FileService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return Ok(None);
    }
    let svc = FileService::start(FileParts {
        node_id: config.node.id.clone(),
        config: config.file.clone(),
        store: store.clone(),
        link: link.clone().map(|l| l as Arc<dyn FileLink>),
    })
    .await
    .context("cannot start the file role")?;
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::File, svc.clone());
    }
    Ok(Some(svc))
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

/// Starts the proc role where the API or the link runs (it takes plugin
/// process operations from the API to this node's agents and their
/// results, status and alarms back) and hands it the link's plugin frames.
/// The caller spawns its dispatcher.
fn start_proc_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    alarms: &Option<Arc<AlarmService>>,
    danger: Arc<gse_core::danger::DangerPolicy>,
) -> Option<Arc<ProcService>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return None;
    }
    let svc = ProcService::new(ProcParts {
        node_id: config.node.id.clone(),
        config: config.proc.clone(),
        store: store.clone(),
        link: link.clone().map(|l| l as Arc<dyn AgentLink>),
        alarms: alarms.clone(),
        danger,
    });
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::Proc, svc.clone());
    }
    Some(svc)
}

/// Makes `node.data_dir` (0700: it holds the state store and task logs);
/// an existing one that other users can enter is closed to them.
fn prepare_data_dir(dir: &std::path::Path) -> Result<()> {
    let closed = gse_core::private_files::make_private_dir(dir)
        .with_context(|| format!("cannot create node.data_dir {} (mode 0700)", dir.display()))?;
    if let Some(mode) = closed {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "node.data_dir was open to other users; closed it (0700)");
    }
    Ok(())
}

/// Opens the configured state store, marks offline the agents this node
/// held before it started, and seeds the configured apps.
async fn open_store(config: &ServerConfig) -> Result<Arc<dyn StateStore>> {
    let store = crate::store::open(config).await?;
    // None of this node's old connections survived its restart; a shared
    // store (Redis) says they are alive until told (the embedded store
    // loads every agent offline anyway).
    store
        .mark_node_offline(&config.node.id)
        .await
        .context("cannot mark the agents this node held before it started offline")?;
    let apps = config.api.apps.clone();
    let records = tokio::task::spawn_blocking(move || {
        apps.iter()
            .filter_map(|a| a.to_record())
            .collect::<Vec<_>>()
    })
    .await?;
    for app in records {
        store
            .put_app(app)
            .await
            .context("cannot save the apps of [api] apps")?;
    }
    Ok(store)
}

/// ZooKeeper when `[cluster] zookeeper` is set (K1), else this node alone.
async fn start_registry(
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

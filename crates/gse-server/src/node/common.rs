//! What every role start shares: the node's data dir, its state store (with
//! the configured apps), the open-files budget, the dangerous-operation
//! rules, and the shutdown token and task set every role runs under.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use gse_core::danger::DangerRuleSpec;
use gse_core::seams::{AgentDirectory, StateStore};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::fd_budget::{self, FdBudget};
use crate::role::data::snapshot::SharedSnapshots;

/// The wiring every role is started on.
pub(super) struct Base {
    pub node_id: String,
    pub store: Arc<dyn StateStore>,
    /// Where agents are held: the link claims them, the sender reads it.
    pub directory: Arc<dyn AgentDirectory>,
    /// Where a cluster's nodes share system snapshots (Redis); `None` for
    /// the embedded store.
    pub shared_snapshots: Option<Arc<dyn SharedSnapshots>>,
    pub budget: FdBudget,
    /// `[danger]` resolved: the task and proc roles and the link check
    /// against it.
    pub danger_rules: Vec<DangerRuleSpec>,
    pub shutdown: CancellationToken,
    /// Every long-running role task; [`super::Node::stop`] waits for them.
    pub joins: JoinSet<()>,
}

impl Base {
    /// Makes the data dir, opens the store and plans the open files.
    pub async fn open(config: &ServerConfig) -> Result<Base> {
        prepare_data_dir(&config.node.data_dir)?;
        let crate::store::Opened {
            store,
            directory,
            snapshots: shared_snapshots,
        } = open_store(config).await?;
        let budget = FdBudget::plan(config, fd_budget::open_files_limit());
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
        Ok(Base {
            node_id: config.node.id.clone(),
            store,
            directory,
            shared_snapshots,
            budget,
            danger_rules,
            shutdown: CancellationToken::new(),
            joins: JoinSet::new(),
        })
    }
}

/// Binds a role's listener; the error names the config key to change.
pub(super) async fn bind(addr: SocketAddr, what: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; set {key} to a free address or stop the process using it")
    })
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

/// Opens the configured state store (with the agent directory and shared
/// snapshots that go with it), marks offline the agents this node held
/// before it started, and seeds the configured apps.
async fn open_store(config: &ServerConfig) -> Result<crate::store::Opened> {
    let opened = crate::store::open_with_directory(config).await?;
    let store = &opened.store;
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
    Ok(opened)
}

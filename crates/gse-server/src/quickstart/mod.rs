//! `gse-server quickstart`: the node side. The machinery (directory,
//! certificates, app, local agents, quickstart.json, signals) is
//! `gse_launch::quickstart`; this module writes the node configs (ordinary
//! configs `gse-server run` runs the same way) and starts the node(s):
//! by default one node in this process (`DIR/server.toml`); with
//! `--nodes N --zookeeper --redis` N `gse-server run` processes
//! ([`cluster`], `DIR/node-<i>/server.toml`).

mod cluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::private_files;
use gse_core::seams::StateStore;
pub use gse_launch::quickstart::{
    APP_CODE, AreaOption, ClusterOptions, QuickstartOptions, prepare_dir,
};
use gse_launch::quickstart::{NodeEntry, NodeExit, NodeSetup, QuickstartNode};

use crate::config::ServerConfig;
use crate::node::Node;

/// Runs the whole quickstart until a signal (see `gse_launch::quickstart`).
pub async fn run(opts: QuickstartOptions) -> Result<()> {
    gse_launch::quickstart::run(opts, start_nodes).await
}

async fn start_nodes(setup: NodeSetup) -> Result<Started> {
    Ok(match &setup.cluster {
        None => Started::Embedded(Box::new(start_node(setup).await?)),
        Some(cluster) => Started::Cluster(cluster::start(&setup, cluster).await?),
    })
}

/// What quickstart started: today's single node in this process, or a
/// cluster of node processes.
enum Started {
    // Boxed: a Node is large and the enum is moved around once.
    Embedded(Box<StartedNode>),
    Cluster(cluster::ClusterNodes),
}

async fn start_node(setup: NodeSetup) -> Result<StartedNode> {
    let config = server_config(&setup);
    let path = setup.dir.join("server.toml");
    private_files::write_private(&path, config.to_toml().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let node = Node::start(config).await?;
    Ok(StartedNode {
        api: node.api_addr.context("quickstart runs the api role")?,
        agents: node.agent_addr.context("quickstart runs the link role")?,
        config_path: path,
        node,
    })
}

fn server_config(setup: &NodeSetup) -> ServerConfig {
    let mut config =
        ServerConfig::with_defaults(setup.dir.join("server"), setup.server_tls.clone());
    config.node.id = "quickstart".into();
    config.api.listen = setup.api_listen;
    config.link.listen = setup.agent_listen;
    // A free port: agents learn their DataServer from the link (D4).
    config.data.listen = vec![SocketAddr::new(setup.agent_listen.ip(), 0)];
    config.alarm.log_file = Some(setup.dir.join("alarms.jsonl"));
    config.resolve();
    config
}

/// The node with the addresses its api and link roles bound.
struct StartedNode {
    node: Node,
    api: SocketAddr,
    agents: SocketAddr,
    config_path: PathBuf,
}

impl QuickstartNode for Started {
    fn nodes(&self) -> Vec<NodeEntry> {
        match self {
            Started::Embedded(n) => vec![NodeEntry {
                node_id: n.node.config.node.id.clone(),
                api: format!("http://{}", n.api),
                agent_listen: n.agents.to_string(),
                pid: std::process::id(),
                config: n.config_path.clone(),
            }],
            Started::Cluster(c) => c.processes.entries(),
        }
    }

    fn agent_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Started::Embedded(n) => vec![n.agents],
            Started::Cluster(c) => c.processes.agent_addrs(),
        }
    }

    fn store(&self) -> &dyn StateStore {
        match self {
            Started::Embedded(n) => n.node.store.as_ref(),
            Started::Cluster(c) => c.store.as_ref(),
        }
    }

    fn alarm_log(&self) -> PathBuf {
        match self {
            Started::Embedded(n) => n.node.config.alarm.log_file.clone().unwrap_or_default(),
            Started::Cluster(c) => c.alarm_log.clone(),
        }
    }

    async fn next_exit(&mut self) -> NodeExit {
        match self {
            // The node runs in this process: it ends with quickstart.
            Started::Embedded(_) => std::future::pending().await,
            Started::Cluster(c) => c.processes.next_exit().await,
        }
    }

    async fn stop(self, grace: Duration) {
        match self {
            Started::Embedded(n) => n.node.stop(grace).await,
            Started::Cluster(mut c) => c.processes.stop(grace).await,
        }
    }
}

//! `gse-server quickstart`: the node side. The machinery (directory,
//! certificates, app, local agents, quickstart.json, signals) is
//! `gse_launch::quickstart`; this module writes the node's config
//! (`DIR/server.toml`, an ordinary config `gse-server run` runs the same
//! way) and starts the node in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_core::private_files;
use gse_core::seams::StateStore;
pub use gse_launch::quickstart::{APP_CODE, QuickstartOptions, prepare_dir};
use gse_launch::quickstart::{NodeSetup, QuickstartNode};

use crate::config::ServerConfig;
use crate::node::Node;

/// Runs the whole quickstart until a signal (see `gse_launch::quickstart`).
pub async fn run(opts: QuickstartOptions) -> Result<()> {
    gse_launch::quickstart::run(opts, start_node).await
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
}

impl QuickstartNode for StartedNode {
    fn api_addr(&self) -> SocketAddr {
        self.api
    }

    fn agent_addr(&self) -> SocketAddr {
        self.agents
    }

    fn store(&self) -> &dyn StateStore {
        self.node.store.as_ref()
    }

    fn alarm_log(&self) -> PathBuf {
        self.node.config.alarm.log_file.clone().unwrap_or_default()
    }

    async fn stop(self, grace: Duration) {
        self.node.stop(grace).await
    }
}

//! Quickstart's cluster (`--nodes N --zookeeper --redis`): node i (1-based)
//! is `node-<i>`, a `gse-server run` process on `DIR/node-<i>/server.toml`
//! with its data in `DIR/node-<i>/data`, joined to the ZooKeeper and
//! keeping its state in the Redis. Quickstart itself opens the same Redis
//! store (to register its app and watch the agents register).
//!
//! Ports: a port given for the first node (`--api-listen`,
//! `--agent-listen`) is that node's, and node i uses it plus i-1; port 0
//! picks a free port per node. Every node's node link
//! (`cluster.node_listen`) gets a free port. The chosen ports are written
//! into the configs, so `gse-server run -c` brings a node back on them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::private_files;
use gse_core::seams::StateStore;
use gse_launch::quickstart::cluster::{NodeProcesses, NodeSpec};
use gse_launch::quickstart::{ClusterOptions, NodeSetup};

use crate::config::ServerConfig;

/// A quickstart node leaves the others' lists this long after it dies
/// (shorter than a deployment's default: this is a first look, on one host).
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node process has to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running nodes and quickstart's own client of their Redis store.
pub(super) struct ClusterNodes {
    pub processes: NodeProcesses,
    pub store: Arc<dyn StateStore>,
    /// The first node's alarm log.
    pub alarm_log: PathBuf,
}

/// Writes every node's config, opens the Redis store (an unreachable Redis
/// fails here, before any node starts), then starts the nodes in turn.
pub(super) async fn start(setup: &NodeSetup, cluster: &ClusterOptions) -> Result<ClusterNodes> {
    let mut specs = Vec::new();
    let mut configs = Vec::new();
    for i in 1..=cluster.nodes {
        let (spec, config) = node_config(setup, cluster, i)?;
        let text = config.to_toml();
        private_files::write_private(&spec.config, text.as_bytes())
            .with_context(|| format!("cannot write {}", spec.config.display()))?;
        specs.push(spec);
        configs.push(config);
    }
    let first = &configs[0];
    let store = crate::store::open(first)
        .await
        .with_context(|| format!("cannot open {} (--redis)", crate::store::location(first)))?;
    let alarm_log = first.alarm.log_file.clone().unwrap_or_default();
    let bin = std::env::current_exe().context("cannot find the gse-server executable")?;
    let processes = NodeProcesses::start(&bin, specs, STOP_GRACE).await?;
    Ok(ClusterNodes {
        processes,
        store,
        alarm_log,
    })
}

/// Node i's (1-based) spec and config; see the module doc.
fn node_config(
    setup: &NodeSetup,
    cluster: &ClusterOptions,
    i: u32,
) -> Result<(NodeSpec, ServerConfig)> {
    let node_id = format!("node-{i}");
    let dir = setup.dir.join(&node_id);
    private_files::make_private_dir(&dir)
        .with_context(|| format!("cannot make {}", dir.display()))?;
    let mut config = ServerConfig::with_defaults(dir.join("data"), setup.server_tls.clone());
    config.node.id = node_id.clone();
    config.api.listen = nth_addr(setup.api_listen, i)?;
    config.link.listen = nth_addr(setup.agent_listen, i)?;
    // The nodes and their agents are on this host: a wildcard listen is
    // reached (and advertised to the other nodes) on loopback.
    let reach_ip = match config.link.listen.ip() {
        ip if ip.is_unspecified() => {
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            config.node.advertise_ip = Some(loopback);
            loopback
        }
        ip => ip,
    };
    config.data.listen = vec![SocketAddr::new(config.link.listen.ip(), 0)];
    config.alarm.log_file = Some(dir.join("alarms.jsonl"));
    config.cluster.zookeeper = vec![cluster.zookeeper.clone()];
    config.cluster.session_timeout = SESSION_TIMEOUT;
    config.cluster.node_listen = free_addr(config.link.listen.ip())?;
    config.store.redis = Some(cluster.redis.clone());
    config.resolve();
    if let Err(problems) = config.validate() {
        bail!(
            "node {node_id}'s config is not valid:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let api_ip = match config.api.listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let spec = NodeSpec {
        node_id,
        config: dir.join("server.toml"),
        api: SocketAddr::new(api_ip, config.api.listen.port()),
        agent_addr: SocketAddr::new(reach_ip, config.link.listen.port()),
        dir,
    };
    Ok((spec, config))
}

/// Node i's address from the first node's: the same IP; the port plus
/// i-1, or a free one when the port is 0.
fn nth_addr(first: SocketAddr, i: u32) -> Result<SocketAddr> {
    if first.port() == 0 {
        return free_addr(first.ip());
    }
    let port = u16::try_from(u32::from(first.port()) + i - 1)
        .ok()
        .with_context(|| format!("no port {} + {} for node-{i}", first.port(), i - 1))?;
    Ok(SocketAddr::new(first.ip(), port))
}

/// A port free now on `ip` (the node binds it moments later).
fn free_addr(ip: IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot find a free port on {ip}"))?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_first_or_are_free() {
        let first: SocketAddr = "127.0.0.1:59313".parse().unwrap();
        assert_eq!(nth_addr(first, 1).unwrap(), first);
        assert_eq!(nth_addr(first, 3).unwrap().port(), 59315);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = nth_addr(any, 2).unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(a.ip(), any.ip());
        assert!(nth_addr("127.0.0.1:65535".parse().unwrap(), 2).is_err());
    }
}

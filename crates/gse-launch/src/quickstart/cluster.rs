//! Quickstart's cluster: N `gse-server run` child processes, one per node,
//! each on its own config file and data dir (written by the caller,
//! gse-server, which knows the config format). Quickstart watches them: a
//! node that exits is reported once, with the command that brings it back,
//! and the others keep running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::server::ServerProcess;

/// The flags that make quickstart start a cluster: `--nodes`,
/// `--zookeeper`, `--redis`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOptions {
    pub nodes: u32,
    /// `host:port` of the ZooKeeper the nodes join (`[cluster] zookeeper`).
    pub zookeeper: String,
    /// `redis://...` of the Redis the nodes share (`[store] redis`).
    pub redis: String,
}

/// Most nodes quickstart starts (each is a process with a few ports).
pub const MAX_NODES: u32 = 16;

impl ClusterOptions {
    /// The cluster the flags ask for: none (today's single node in this
    /// process) without any of them; N nodes with both `--zookeeper` and
    /// `--redis`. More than one node without them, or one of them without
    /// the other, is an error naming the missing flag.
    pub fn from_flags(
        nodes: Option<u32>,
        zookeeper: Option<String>,
        redis: Option<String>,
    ) -> Result<Option<ClusterOptions>> {
        if let Some(n) = nodes
            && (n == 0 || n > MAX_NODES)
        {
            bail!("--nodes {n} is out of range: give 1..={MAX_NODES}");
        }
        let (zookeeper, redis) = match (zookeeper, redis) {
            (None, None) => {
                if nodes.is_some_and(|n| n > 1) {
                    bail!(
                        "--nodes {} needs --zookeeper HOST:PORT and --redis redis://HOST:PORT: \
                         the nodes find each other in ZooKeeper and share their state in Redis \
                         (scripts/quickstart.sh --cluster N starts both)",
                        nodes.unwrap_or(0)
                    );
                }
                return Ok(None);
            }
            (Some(_), None) => bail!(
                "--zookeeper needs --redis redis://HOST:PORT too: cluster nodes share their state in Redis"
            ),
            (None, Some(_)) => bail!(
                "--redis needs --zookeeper HOST:PORT too: cluster nodes find each other in ZooKeeper"
            ),
            (Some(zk), Some(redis)) => (zk, redis),
        };
        if !zookeeper
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            bail!("--zookeeper {zookeeper:?}: write it as HOST:PORT");
        }
        if !redis.starts_with("redis://") && !redis.starts_with("rediss://") {
            bail!("--redis: write it as redis://[user:password@]HOST:PORT[/db]");
        }
        Ok(Some(ClusterOptions {
            nodes: nodes.unwrap_or(1),
            zookeeper,
            redis,
        }))
    }
}

/// One node of quickstart.json's `nodes`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeEntry {
    pub node_id: String,
    /// `http://host:port` of its API.
    pub api: String,
    /// Where its agents connect.
    pub agent_listen: String,
    pub pid: u32,
    /// Its config file: `gse-server run -c <config>` runs it again.
    pub config: PathBuf,
}

/// What the caller wrote for one node, to be started.
pub struct NodeSpec {
    pub node_id: String,
    /// Its config file.
    pub config: PathBuf,
    /// Where its output and log go.
    pub dir: PathBuf,
    /// Its `api.listen` (a concrete port: readiness is asked there).
    pub api: SocketAddr,
    /// The address agents dial (its `link.listen`, advertised IP).
    pub agent_addr: SocketAddr,
}

struct RunningNode {
    spec: NodeSpec,
    process: ServerProcess,
    /// Set once its exit has been reported.
    exited: bool,
}

/// A node process that exited, as [`NodeProcesses::next_exit`] reports it.
pub struct NodeExit {
    pub node_id: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl NodeExit {
    /// What quickstart prints: which node, and how to bring it back.
    pub fn message(&self, server_bin: &Path) -> String {
        format!(
            "node {} (pid {}) exited ({}); the other nodes keep running and its agents move to them. \
             Its log: {}. Bring it back with:\n  {} run -c {}",
            self.node_id,
            self.pid,
            self.status,
            self.log.display(),
            server_bin.display(),
            self.config.display()
        )
    }
}

/// Quickstart's node processes; see the module doc.
pub struct NodeProcesses {
    nodes: Vec<RunningNode>,
}

/// How often quickstart looks at its node processes.
const WATCH_EVERY: Duration = Duration::from_millis(200);

impl NodeProcesses {
    /// Starts `bin run -c <config>` for every spec in turn, each ready
    /// (`/healthz`) before the next; on a failure the ones started are
    /// stopped and the error names the node.
    pub async fn start(bin: &Path, specs: Vec<NodeSpec>, grace: Duration) -> Result<Self> {
        let mut started = NodeProcesses { nodes: Vec::new() };
        for spec in specs {
            match ServerProcess::start(bin, &spec.config, &spec.dir, spec.api).await {
                Ok(process) => started.nodes.push(RunningNode {
                    spec,
                    process,
                    exited: false,
                }),
                Err(e) => {
                    started.stop(grace).await;
                    return Err(e.context(format!(
                        "node {} (config {}) did not start",
                        spec.node_id,
                        spec.config.display()
                    )));
                }
            }
        }
        Ok(started)
    }

    /// quickstart.json's `nodes`, in start order.
    pub fn entries(&self) -> Vec<NodeEntry> {
        self.nodes
            .iter()
            .map(|n| NodeEntry {
                node_id: n.spec.node_id.clone(),
                api: format!("http://{}", n.spec.api),
                agent_listen: n.spec.agent_addr.to_string(),
                pid: n.process.pid(),
                config: n.spec.config.clone(),
            })
            .collect()
    }

    /// Every node's agent address (what agents list).
    pub fn agent_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.spec.agent_addr).collect()
    }

    /// Waits until a node process not reported yet exits, and reports it
    /// (once). Never returns while they all run; cancel-safe.
    pub async fn next_exit(&mut self) -> NodeExit {
        loop {
            for n in self.nodes.iter_mut().filter(|n| !n.exited) {
                // An error asking means the child is gone from our view:
                // treated as running, asked again next round.
                if let Ok(Some(status)) = n.process.exited() {
                    n.exited = true;
                    return NodeExit {
                        node_id: n.spec.node_id.clone(),
                        pid: n.process.pid(),
                        status,
                        config: n.spec.config.clone(),
                        log: n.process.log.clone(),
                    };
                }
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Stops every node still running (SIGTERM, SIGKILL after `grace`),
    /// all at once.
    pub async fn stop(&mut self, grace: Duration) {
        let stops = self.nodes.iter_mut().map(|n| n.process.stop(grace));
        futures::future::join_all(stops).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cluster_flags_quickstart_stays_a_single_node() {
        assert_eq!(ClusterOptions::from_flags(None, None, None).unwrap(), None);
        assert_eq!(
            ClusterOptions::from_flags(Some(1), None, None).unwrap(),
            None
        );
    }

    #[test]
    fn several_nodes_need_zookeeper_and_redis_and_say_so() {
        let e = ClusterOptions::from_flags(Some(2), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--zookeeper") && e.contains("--redis"), "{e}");
        let e = ClusterOptions::from_flags(Some(3), Some("127.0.0.1:2181".into()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--redis"), "{e}");
        let e = ClusterOptions::from_flags(Some(3), None, Some("redis://127.0.0.1:6379".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--zookeeper"), "{e}");
        assert!(ClusterOptions::from_flags(Some(0), None, None).is_err());
        assert!(
            ClusterOptions::from_flags(Some(2), Some("nohost".into()), Some("redis://x:1".into()))
                .is_err()
        );
    }

    #[test]
    fn zookeeper_and_redis_make_a_cluster_of_the_nodes_asked() {
        let c = ClusterOptions::from_flags(
            Some(3),
            Some("127.0.0.1:2181".into()),
            Some("redis://127.0.0.1:6379/".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.nodes, 3);
        let one = ClusterOptions::from_flags(
            None,
            Some("127.0.0.1:2181".into()),
            Some("redis://127.0.0.1:6379/".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(one.nodes, 1);
    }
}

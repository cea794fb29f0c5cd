//! Cluster membership (K1): the `[cluster]` config section and the
//! ZooKeeper [`Registry`](gse_core::seams::Registry) ([`ZkRegistry`]).
//! Without `[cluster] zookeeper` a node is the embedded single node and
//! uses the static registry. [`sender`] is the one way to reach an agent,
//! wherever the agent directory says it is held.

pub mod balance;
pub mod membership;
pub mod nodelink;
pub mod sender;
pub mod zk;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use zk::ZkRegistry;

/// `[cluster]`: how this node finds the others.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// ZooKeeper servers, "host:port"; empty: an embedded single node.
    #[serde(default)]
    pub zookeeper: Vec<String>,
    /// Path under which this cluster keeps its entries (made if missing);
    /// clusters sharing a ZooKeeper use different roots.
    #[serde(default = "default_zk_root")]
    pub zk_root: String,
    /// Digest authentication, "user:password" (GSE's `zkauth`); unset:
    /// none. With it, the entries this node makes only it may change.
    #[serde(default)]
    pub zk_auth: Option<String>,
    /// ZooKeeper session timeout: a node that dies leaves the list this
    /// long after (a clean stop leaves at once).
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often every node's entry (its load) is read again; joins and
    /// departures are seen at once.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Where this node accepts node links from the other nodes (T1):
    /// forwarded work for its agents and their answers. Advertised to the
    /// others as `node.advertise_ip` (or the bound address) with this port.
    #[serde(default = "default_node_listen")]
    pub node_listen: SocketAddr,
    /// The name the other nodes' certificates must carry (every node's
    /// server certificate from `gse-server certs` has it).
    #[serde(default = "default_node_server_name")]
    pub node_server_name: String,
    /// K2 balance by connections: redirect registering agents and hand
    /// agents over to less loaded nodes; false = every agent stays on the
    /// node it registers with.
    #[serde(default = "default_balance")]
    pub balance: bool,
    /// K2 hand-over: at most this many agents a second that a node holding
    /// more than its share asks to move to a less loaded node once idle
    /// (with jitter); 0 = never hand agents over (registrations are still
    /// redirected).
    #[serde(default = "default_rebalance_per_s")]
    pub rebalance_per_s: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            zookeeper: Vec::new(),
            zk_root: default_zk_root(),
            zk_auth: None,
            session_timeout: default_session_timeout(),
            refresh: default_refresh(),
            node_listen: default_node_listen(),
            node_server_name: default_node_server_name(),
            balance: default_balance(),
            rebalance_per_s: default_rebalance_per_s(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is a cluster member.
    pub fn enabled(&self) -> bool {
        !self.zookeeper.is_empty()
    }

    /// Pure checks; each problem names its key and value.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for server in &self.zookeeper {
            let port_ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                p.push(format!(
                    "cluster.zookeeper has {server:?}: write each server as \"host:port\""
                ));
            }
        }
        if !self.zk_root.starts_with('/') || (self.zk_root.len() > 1 && self.zk_root.ends_with('/'))
        {
            p.push(format!(
                "cluster.zk_root = {:?}: an absolute ZooKeeper path such as \"/gse\"",
                self.zk_root
            ));
        }
        if self.zk_auth.as_ref().is_some_and(|a| !a.contains(':')) {
            p.push("cluster.zk_auth must be \"user:password\"".into());
        }
        if self.node_server_name.trim().is_empty() {
            p.push("cluster.node_server_name is empty: the name on the nodes' certificates, such as \"gse-server\"".into());
        }
        if self.rebalance_per_s > 1000 {
            p.push(format!(
                "cluster.rebalance_per_s = {}: at most 1000 agents a second",
                self.rebalance_per_s
            ));
        }
        if self.session_timeout < Duration::from_secs(2) {
            p.push(format!(
                "cluster.session_timeout = {:?}: at least 2s",
                self.session_timeout
            ));
        }
        p
    }
}

fn default_zk_root() -> String {
    "/gse".into()
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_refresh() -> Duration {
    Duration::from_secs(2)
}

/// 28669: beside the agent link's 28668 (GSE 2.0 has no node-link port).
fn default_node_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 28669))
}

fn default_balance() -> bool {
    true
}

/// A node joining a cluster of 20,000-agent nodes takes a few minutes to
/// fill, while reconnects stay a trickle next to the heartbeats.
fn default_rebalance_per_s() -> u32 {
    50
}

fn default_node_server_name() -> String {
    gse_core::certs::DEFAULT_SERVER_NAME.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let cfg = ClusterConfig {
            zookeeper: vec!["zk1:2181".into(), "zk2".into()],
            zk_root: "gse/".into(),
            zk_auth: Some("nopass".into()),
            session_timeout: Duration::from_millis(500),
            ..ClusterConfig::default()
        };
        let p = cfg.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("\"zk2\""));
        assert!(ClusterConfig::default().problems().is_empty());
        assert!(!ClusterConfig::default().enabled());
    }
}

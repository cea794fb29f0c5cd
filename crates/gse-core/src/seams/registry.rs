//! `Registry`: the server nodes of a cluster and their load (K1, K2, K5).
//!
//! The embedded [`StaticRegistry`] knows this node and any peers listed in the
//! config; the ZooKeeper registry (cluster issue) adds ephemeral membership and
//! watches. Agents are balanced over `nodes()` by `agents` (K2).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One server node as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub node_id: String,
    /// K5 region; empty = cluster-wide policy.
    #[serde(default)]
    pub region: String,
    /// Roles this node runs ("api", "link", "alarm", ...).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Address agents connect to (`ip:port`).
    pub agent_addr: String,
    /// Address of the HTTP API, if the node runs it.
    #[serde(default)]
    pub api_addr: String,
    /// Agents currently connected.
    #[serde(default)]
    pub agents: u64,
    /// Address of the node link (`ip:port`) other nodes forward work to
    /// (T1); empty for a node without one (not a cluster member).
    #[serde(default)]
    pub node_addr: String,
    /// This node's DataServers and their load (D4 across nodes): every
    /// node with the link role assigns and moves its agents over all of
    /// the cluster's DataServers. Empty for a node without the data role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_servers: Vec<DataServerInfo>,
}

/// One DataServer of a node, as the node publishes it in its entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataServerInfo {
    /// `<node_id>/data<index>`, unique in the cluster.
    pub id: String,
    /// `host:port` an agent of any node dials: the advertised address,
    /// never a wildcard.
    pub endpoint: String,
    /// Data links open now.
    pub links: u64,
    /// Bytes a second received over the last measurement interval.
    pub bytes_per_s: u64,
}

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry backend {backend} unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// Short name for logs and metrics ("static", "zookeeper").
    fn kind(&self) -> &'static str;
    /// Publishes (or refreshes) this node, including its current load.
    async fn announce(&self, me: NodeInfo) -> Result<(), RegistryError>;
    /// Every known node, this one included.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;
    /// Changes to the node list, as they happen.
    fn watch(&self) -> watch::Receiver<Vec<NodeInfo>>;
}

/// Embedded registry: this node plus peers fixed in the config.
pub struct StaticRegistry {
    peers: Vec<NodeInfo>,
    me: Mutex<Option<NodeInfo>>,
    tx: Arc<watch::Sender<Vec<NodeInfo>>>,
}

impl StaticRegistry {
    pub fn new(peers: Vec<NodeInfo>) -> Self {
        let (tx, _) = watch::channel(peers.clone());
        StaticRegistry {
            peers,
            me: Mutex::new(None),
            tx: Arc::new(tx),
        }
    }

    fn snapshot(&self) -> Vec<NodeInfo> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut all: Vec<NodeInfo> = me.into_iter().collect();
        let others: Vec<NodeInfo> = self
            .peers
            .iter()
            .filter(|p| all.iter().all(|m| m.node_id != p.node_id))
            .cloned()
            .collect();
        all.extend(others);
        all
    }
}

#[async_trait]
impl Registry for StaticRegistry {
    fn kind(&self) -> &'static str {
        "static"
    }

    async fn announce(&self, me: NodeInfo) -> Result<(), RegistryError> {
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
        let all = self.snapshot();
        self.tx.send_if_modified(|cur| {
            let changed = *cur != all;
            *cur = all;
            changed
        });
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        Ok(self.snapshot())
    }

    fn watch(&self) -> watch::Receiver<Vec<NodeInfo>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, agents: u64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            region: String::new(),
            roles: vec!["link".into()],
            agent_addr: "127.0.0.1:28668".into(),
            api_addr: String::new(),
            agents,
            node_addr: String::new(),
            data_servers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn announce_is_seen_by_nodes_and_watchers() {
        let reg = StaticRegistry::new(vec![node("peer", 0)]);
        let mut rx = reg.watch();
        reg.announce(node("me", 3)).await.unwrap();
        assert!(rx.has_changed().unwrap());
        let ids: Vec<_> = rx
            .borrow_and_update()
            .iter()
            .map(|n| n.node_id.clone())
            .collect();
        assert_eq!(ids, ["me", "peer"]);
        reg.announce(node("me", 3)).await.unwrap();
        assert!(!rx.has_changed().unwrap(), "same state is not a change");
        assert_eq!(reg.nodes().await.unwrap()[0].agents, 3);
    }
}

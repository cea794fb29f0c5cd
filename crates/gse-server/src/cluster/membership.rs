//! What a cluster does when a node leaves (DESIGN.md "Membership"): one
//! surviving node, the one with the lowest id, adopts the dead node's
//! agents: it marks them offline in the store, releases the dead node's
//! claims in the agent directory (claims of agents that registered
//! elsewhere since are newer and stay), and gives each `lost_grace` to come
//! back before it raises `agent_lost`, once in the cluster.
//!
//! A node must stay out of the registry for `confirm_after` (the ZooKeeper
//! session timeout) before its agents are adopted: a ZooKeeper restart or
//! an expired session empties the list for a moment while every node is
//! alive; the registry is read again just before acting, so a node that is
//! back (re-registered, or quickly restarted) is left alone. The sending
//! side of work on the dead node's agents ends in the node link
//! (`nodelink`, per agent), not here.

use std::collections::BTreeSet;
use std::sync::Arc;

use gse_core::seams::{AgentDirectory, Registry, StateStore};
use tokio_util::sync::CancellationToken;

use crate::role::alarm::AlarmService;

/// What [`spawn`] needs.
pub struct MembershipParts {
    pub node_id: String,
    pub registry: Arc<dyn Registry>,
    pub directory: Arc<dyn AgentDirectory>,
    pub store: Arc<dyn StateStore>,
    pub alarms: Option<Arc<AlarmService>>,
    /// How long a node must stay out of the registry before its agents are
    /// adopted (`cluster.session_timeout`): a ZooKeeper that restarted, or
    /// a session that expired, empties the list for a moment while every
    /// node is alive and re-registering.
    pub confirm_after: std::time::Duration,
    pub shutdown: CancellationToken,
}

/// Watches the node list until shutdown; see the module doc.
pub fn spawn(parts: MembershipParts) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(parts))
}

async fn run(p: MembershipParts) {
    let p = Arc::new(p);
    let mut watch = p.registry.watch();
    let mut known: BTreeSet<String> = ids(&watch.borrow_and_update());
    loop {
        tokio::select! {
            _ = p.shutdown.cancelled() => return,
            changed = watch.changed() => if changed.is_err() { return },
        }
        let live = ids(&watch.borrow_and_update());
        let gone: Vec<String> = known.difference(&live).cloned().collect();
        // Nodes that joined are known from now on; a departure is acted on
        // once.
        known = live.clone();
        if gone.is_empty() || !adopter(&live, &p.node_id) {
            continue;
        }
        for dead in gone {
            let p = p.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = p.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(p.confirm_after) => adopt(&p, &dead).await,
                }
            });
        }
    }
}

/// Whether `me` adopts the agents of nodes that left: the lowest live id.
fn adopter(live: &BTreeSet<String>, me: &str) -> bool {
    live.iter().next().is_some_and(|first| first == me)
}

fn ids(nodes: &[gse_core::seams::NodeInfo]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.node_id.clone()).collect()
}

async fn adopt(p: &MembershipParts, dead: &str) {
    match p.registry.nodes().await {
        Ok(nodes) if nodes.iter().any(|n| n.node_id == dead) => {
            tracing::info!(node = %dead, "node is back before its agents were adopted; nothing to do");
            return;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(node = %dead, error = %e, "cannot confirm that a node left; adopting its agents anyway");
        }
    }
    let offline = match p.store.mark_node_offline(dead).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(node = %dead, error = %e, "cannot mark the agents of a node that left offline; status shows them alive until they register again");
            Vec::new()
        }
    };
    match p.directory.release_node(dead).await {
        Ok(released) => {
            tracing::info!(node = %dead, released = released.len(), offline = offline.len(), "node left the cluster; its agents are released")
        }
        Err(e) => {
            tracing::error!(node = %dead, error = %e, "cannot release the claims of a node that left; its agents are unreachable until they register again")
        }
    }
    if let Some(alarms) = &p.alarms {
        alarms.adopt_dead_node(dead, &offline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_live_node_adopts() {
        let live: BTreeSet<String> = ["node-2", "node-3"].map(String::from).into();
        assert!(adopter(&live, "node-2"));
        assert!(!adopter(&live, "node-3"));
        assert!(!adopter(&BTreeSet::new(), "node-1"));
    }
}

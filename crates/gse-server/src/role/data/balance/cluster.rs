//! D4 across nodes: the cluster's DataServers as this node's balancer sees
//! them.
//!
//! Every node publishes its DataServers in its registry entry
//! (`NodeInfo::data_servers`: id, the endpoint agents dial, links, bytes/s
//! over the last interval; `node::cluster` writes it, within a second of a
//! change), so a dead node's vanish with its ephemeral entry. A node
//! balancing its agents puts its own DataServers (measured here, now) and
//! the others' (as published) in one list of [`Slot`]s. Published figures
//! lag by up to an interval plus the registry refresh, so what this node
//! moved or assigned to another node's DataServer lately ([`Pending`]) is
//! counted on top of them until they include it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::{DataServerInfo, NodeInfo};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{MIN_SPREAD, ServerLoad};
use crate::role::data::DataEndpoint;
use crate::role::link::AgentPath;

/// Where an agent sends its data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// This node's DataServer of that index.
    Local(usize),
    /// Another node's DataServer of that id.
    Remote(String),
    /// None yet: no DataServer of the cluster was reachable for the agent
    /// when it registered, or the one it had is gone (its node left); it
    /// is given one in the next round that finds one.
    Unassigned,
}

/// One DataServer of the cluster in a balancing round.
#[derive(Clone, Debug)]
pub struct Slot {
    pub target: Target,
    pub id: String,
    /// The region of the node that runs it (K5).
    pub region: String,
    /// Bytes/s it receives, from every node's agents.
    pub load: f64,
    pub links: u64,
    endpoint: SlotEndpoint,
}

#[derive(Clone, Debug)]
enum SlotEndpoint {
    Local(DataEndpoint),
    Remote(String),
}

impl Slot {
    /// `host:port` for an agent that reached this node over `path`; `None`
    /// when it cannot reach that DataServer (loopback, agent elsewhere).
    pub fn endpoint_for(&self, path: AgentPath) -> Option<String> {
        match &self.endpoint {
            SlotEndpoint::Local(e) => e.for_agent(path),
            SlotEndpoint::Remote(e) => {
                let loopback = host_ip(e).is_some_and(|ip| ip.is_loopback());
                (!loopback || path.peer_ip.is_loopback()).then(|| e.clone())
            }
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote(_))
    }
}

/// The IP of a `host:port` endpoint, if its host is one.
fn host_ip(endpoint: &str) -> Option<IpAddr> {
    let host = endpoint.rsplit_once(':')?.0;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The least-loaded DataServer an agent of `region` that reached this node
/// over `path` can use, of its region if it reaches some of its region's:
/// among those within [`MIN_SPREAD`] bytes/s of the least loaded (rates
/// wander; a difference a move would not be made for does not send an
/// agent to another node), this node's own with the fewest links, else
/// another node's with the fewest: an agent's data crosses to another node
/// only for load, never for a link count (K2 already spreads the agents).
pub fn choose(slots: &[Slot], path: AgentPath, region: &str) -> Option<usize> {
    let reachable: Vec<usize> = (0..slots.len())
        .filter(|i| slots[*i].endpoint_for(path).is_some())
        .collect();
    let regional = |i: &usize| !region.is_empty() && slots[*i].region == region;
    let in_region = reachable.iter().any(regional);
    let eligible: Vec<usize> = reachable
        .into_iter()
        .filter(|i| !in_region || regional(i))
        .collect();
    let least = eligible
        .iter()
        .map(|i| slots[*i].load)
        .min_by(f64::total_cmp)?;
    eligible
        .into_iter()
        .filter(|i| slots[*i].load <= least + MIN_SPREAD)
        .min_by_key(|i| {
            (
                !matches!(slots[*i].target, Target::Local(_)),
                slots[*i].links,
            )
        })
}

/// The region an agent of `agent_region` is balanced in: its own when a
/// DataServer of that region is up, else the whole cluster (`""`), as K5
/// does for nodes.
pub fn decision_region<'a>(slots: &[Slot], agent_region: &'a str) -> &'a str {
    if !agent_region.is_empty() && slots.iter().any(|s| s.region == agent_region) {
        agent_region
    } else {
        ""
    }
}

/// Whether `slot` is one an agent balanced in `region` may use.
pub fn in_region(slot: &Slot, region: &str) -> bool {
    region.is_empty() || slot.region == region
}

/// Changes this node made to other nodes' DataServers that their published
/// figures may not show yet: (server id, bytes/s, links, when).
#[derive(Default)]
pub struct Pending(Vec<(String, f64, i64, Instant)>);

impl Pending {
    pub fn add(&mut self, id: &str, rate: f64, links: i64) {
        self.0.push((id.to_string(), rate, links, Instant::now()));
    }

    /// Adds the recent changes to the remote slots (forgetting the old ones).
    fn apply(&mut self, slots: &mut [Slot], hold_for: Duration) {
        self.0.retain(|(_, _, _, at)| at.elapsed() < hold_for);
        for (id, rate, links, _) in &self.0 {
            if let Some(s) = slots.iter_mut().find(|s| s.is_remote() && s.id == *id) {
                s.load = (s.load + rate).max(0.0);
                s.links = s.links.saturating_add_signed(*links);
            }
        }
    }
}

/// This node in its cluster, as the balancer needs it.
pub struct ClusterView {
    me: String,
    region: String,
    nodes: watch::Receiver<Vec<NodeInfo>>,
    /// How long [`Pending`] changes count: a published figure covers a
    /// whole measurement interval after the agent moved, and reaches the
    /// others up to a second plus the registry refresh later.
    hold_for: Duration,
}

impl ClusterView {
    pub fn new(
        me: String,
        region: String,
        nodes: watch::Receiver<Vec<NodeInfo>>,
        interval: Duration,
    ) -> ClusterView {
        ClusterView {
            me,
            region,
            nodes,
            hold_for: interval * 2 + Duration::from_secs(5),
        }
    }

    /// Every DataServer of the cluster: this node's first (in `local`
    /// order, loads as measured here, `links` at least the agents this node
    /// `assigned` to each), then the other nodes' with `pending` applied.
    pub fn slots(
        &self,
        local: &[Arc<ServerLoad>],
        assigned: &[u64],
        pending: &mut Pending,
    ) -> Vec<Slot> {
        let mut slots: Vec<Slot> = local_slots(local, &self.region);
        for (i, slot) in slots.iter_mut().enumerate() {
            slot.load = local[i].rate() as f64;
            slot.links = (local[i].links() as u64).max(assigned.get(i).copied().unwrap_or(0));
        }
        for node in self.nodes.borrow().iter().filter(|n| n.node_id != self.me) {
            slots.extend(node.data_servers.iter().map(|d| remote(node, d)));
        }
        pending.apply(&mut slots, self.hold_for);
        slots
    }
}

/// This node's DataServers as slots of `region` (no load figures).
pub fn local_slots(local: &[Arc<ServerLoad>], region: &str) -> Vec<Slot> {
    local
        .iter()
        .enumerate()
        .map(|(i, s)| Slot {
            target: Target::Local(i),
            id: s.id.clone(),
            region: region.to_string(),
            load: 0.0,
            links: 0,
            endpoint: SlotEndpoint::Local(s.endpoint.clone()),
        })
        .collect()
}

fn remote(node: &NodeInfo, d: &DataServerInfo) -> Slot {
    Slot {
        target: Target::Remote(d.id.clone()),
        id: d.id.clone(),
        region: node.region.clone(),
        load: d.bytes_per_s as f64,
        links: d.links,
        endpoint: SlotEndpoint::Remote(d.endpoint.clone()),
    }
}

/// What this node publishes for its DataServer `s`: `None` when it has no
/// address another node's agents could dial (a wildcard listener with
/// neither `data.advertise_host` nor a node address to stand for it).
pub fn published(s: &ServerLoad, node_ip: Option<IpAddr>) -> Option<DataServerInfo> {
    Some(DataServerInfo {
        id: s.id.clone(),
        endpoint: s.endpoint.advertised(node_ip)?,
        links: s.links() as u64,
        bytes_per_s: s.rate(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(peer: &str) -> AgentPath {
        AgentPath {
            parent_ip: peer.parse().unwrap(),
            peer_ip: peer.parse().unwrap(),
        }
    }

    fn slot(endpoint: &str, region: &str) -> Slot {
        Slot {
            target: Target::Remote(endpoint.into()),
            id: endpoint.into(),
            region: region.into(),
            load: 0.0,
            links: 0,
            endpoint: SlotEndpoint::Remote(endpoint.into()),
        }
    }

    #[test]
    fn another_nodes_loopback_data_server_is_only_for_local_agents() {
        let lo = slot("127.0.0.1:5", "");
        assert_eq!(
            lo.endpoint_for(path("127.0.0.9")).as_deref(),
            Some("127.0.0.1:5")
        );
        assert_eq!(lo.endpoint_for(path("10.0.0.9")), None);
        let v6 = slot("[::1]:5", "");
        assert_eq!(v6.endpoint_for(path("10.0.0.9")), None);
        let named = slot("data.example:5", "");
        assert!(named.endpoint_for(path("10.0.0.9")).is_some());
    }

    #[test]
    fn agents_stay_in_their_region_when_it_has_data_servers() {
        let slots = [slot("a:1", "sz"), slot("b:1", "")];
        assert_eq!(decision_region(&slots, "sz"), "sz");
        assert_eq!(decision_region(&slots, "gz"), "");
        assert!(!in_region(&slots[1], "sz"));
        assert!(in_region(&slots[1], ""));
    }

    #[test]
    fn registration_takes_the_least_loaded_reachable_data_server_of_the_region() {
        let mut slots = vec![
            slot("127.0.0.1:1", "sz"),
            slot("127.0.0.2:1", "sz"),
            slot("10.0.0.3:1", ""),
        ];
        slots[0].load = 50_000.0;
        slots[1].links = 3;
        let local = path("127.0.0.9");
        // Its region's two: by load first, then links.
        assert_eq!(choose(&slots, local, "sz"), Some(1));
        slots[1].load = 40_000.0;
        assert_eq!(
            choose(&slots, local, "sz"),
            Some(0),
            "close loads: by links"
        );
        slots[1].links = 0;
        assert_eq!(choose(&slots, local, "sz"), Some(0), "ties: the first");
        // No region, or one without DataServers: the whole cluster.
        assert_eq!(choose(&slots, local, ""), Some(2));
        assert_eq!(choose(&slots, local, "gz"), Some(2));
        // A remote agent cannot reach the loopback ones of its region.
        assert_eq!(choose(&slots, path("10.0.0.9"), "sz"), Some(2));
        assert_eq!(choose(&slots[..2], path("10.0.0.9"), "sz"), None);
    }

    #[test]
    fn registration_stays_on_this_node_unless_another_is_less_loaded() {
        let mut slots = vec![slot("10.0.0.2:1", ""), slot("10.0.0.1:1", "")];
        slots[1].target = Target::Local(0);
        slots[1].links = 40;
        let agent = path("10.0.0.9");
        assert_eq!(
            choose(&slots, agent, ""),
            Some(1),
            "more links but close loads: this node's own"
        );
        slots[1].load = 2.0 * MIN_SPREAD;
        assert_eq!(
            choose(&slots, agent, ""),
            Some(0),
            "busier by more than a move is made for: the other node's"
        );
    }

    #[test]
    fn pending_changes_count_until_they_expire() {
        let mut slots = vec![slot("a:1", ""), slot("b:1", "")];
        let mut pending = Pending::default();
        pending.add("a:1", 1000.0, 1);
        pending.add("b:1", -500.0, -1);
        pending.apply(&mut slots, Duration::from_secs(60));
        assert_eq!((slots[0].load, slots[0].links), (1000.0, 1));
        assert_eq!(
            (slots[1].load, slots[1].links),
            (0.0, 0),
            "never below zero"
        );
        let mut fresh = vec![slot("a:1", "")];
        pending.apply(&mut fresh, Duration::ZERO);
        assert_eq!(fresh[0].load, 0.0);
        assert!(pending.0.is_empty());
    }
}

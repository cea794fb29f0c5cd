//! D4: which DataServer each agent sends to, by measured load.
//!
//! Each DataServer counts what arrives per agent ([`ServerLoad`]). The
//! [`Balancer`] gives an agent that registers on this node's link the
//! least-loaded DataServer (`RegisterAck.data_endpoint`; load = bytes/s of
//! the agents assigned to it over the last interval, then their number).
//! Every `rebalance_interval` it measures each agent's rate and, while the
//! most and least loaded DataServers differ significantly (more than
//! [`MIN_SPREAD`] bytes/s and a fifth of the larger), moves the agent
//! whose rate best halves the difference ([`plan_moves`]), telling it with
//! a `DataAssign` on its control link. An agent is only moved if that
//! narrows the spread, so balanced loads stay put.
//!
//! In a cluster ([`Balancer::join_cluster`]) the DataServers are every
//! node's ([`cluster`]): loads are what each DataServer measures from all
//! nodes' agents (this node's now, the others' as they publish them), an
//! agent with a region is kept on its region's DataServers when there are
//! some (K5), and each node assigns and moves only the agents it holds,
//! at most one a round onto each other node's DataServer
//! ([`plan_moves_over`]). An agent on another node's DataServer keeps the
//! rate measured before it left (that node measures it now, and publishes
//! only its total), or counts with that DataServer's average per link if it
//! never sent here.

mod cluster;
mod load;
mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gse_core::AgentKey;
use gse_proto::link::DataAssign;
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::cluster::{ClusterView, published};
use self::cluster::{Pending, Slot, Target, choose, decision_region, in_region, local_slots};
pub use self::load::{AgentCounters, ServerLoad};
pub use self::plan::{MIN_SPREAD, MIN_SPREAD_SHARE, Move, plan_moves, plan_moves_over};
use super::metrics;
use crate::cluster::sender::Delivery;
use crate::role::link::{AgentFrames, AgentPath, DataAssigner, LinkService};

/// One agent this node assigned.
struct Held {
    at: Target,
    /// The control connection it registered on.
    held: Delivery,
    /// Its region (K5), from its Register.
    region: String,
    /// Its bytes/s when it last sent to this node's DataServers: the rate
    /// it counts with on another node's.
    carried: f64,
}

#[derive(Default)]
struct State {
    assigned: HashMap<AgentKey, Held>,
    /// Bytes per agent at the last round.
    last_totals: HashMap<AgentKey, u64>,
    /// Rates measured at the last round, bytes/s.
    rates: HashMap<AgentKey, f64>,
    last_round: Option<Instant>,
    /// What this node sent to other nodes' DataServers lately.
    pending: Pending,
}

impl State {
    /// Agents this node assigned to each of its `n` DataServers.
    fn local_counts(&self, n: usize) -> Vec<u64> {
        let mut counts = vec![0; n];
        for h in self.assigned.values() {
            if let Target::Local(i) = h.at {
                counts[i] += 1;
            }
        }
        counts
    }
}

/// Assigns and moves agents; see the module docs.
pub struct Balancer {
    servers: Vec<Arc<ServerLoad>>,
    link: Arc<LinkService>,
    state: Mutex<State>,
    cluster: OnceLock<ClusterView>,
}

// === impl Balancer ===

impl Balancer {
    pub fn new(servers: Vec<Arc<ServerLoad>>, link: Arc<LinkService>) -> Arc<Balancer> {
        Arc::new(Balancer {
            servers,
            link,
            state: Mutex::default(),
            cluster: OnceLock::new(),
        })
    }

    /// From now on, balances over every DataServer of the cluster.
    pub fn join_cluster(&self, view: ClusterView) {
        if self.cluster.set(view).is_err() {
            tracing::warn!("the data balancer joined a cluster twice; keeping the first");
        }
    }

    /// Measures this node's DataServers and rebalances every `interval`
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    for s in &self.servers {
                        s.sample();
                    }
                    self.rebalance();
                }
            }
        }
    }

    /// One round: measure, plan, tell the moved agents.
    pub fn rebalance(&self) {
        match self.cluster.get() {
            Some(view) => self.rebalance_cluster(view),
            None => self.rebalance_local(),
        }
    }

    /// A single node's round: its own DataServers, loaded by its agents.
    fn rebalance_local(&self) {
        let slots = local_slots(&self.servers, "");
        let moves = {
            let mut st = self.state.lock();
            self.measure(&mut st);
            let agents: Vec<_> = st
                .assigned
                .iter()
                .filter_map(|(k, h)| match h.at {
                    Target::Local(s) => Some((*k, s, st.rates.get(k).copied().unwrap_or(0.0))),
                    _ => None,
                })
                .collect();
            let mut loads = vec![0.0; self.servers.len()];
            for (_, s, r) in &agents {
                loads[*s] += r;
            }
            for (s, l) in self.servers.iter().zip(&loads) {
                metrics::server_rate(&s.id, *l);
            }
            let moves = plan_moves(self.servers.len(), &agents);
            for m in &moves {
                if let Some(a) = st.assigned.get_mut(&m.agent) {
                    a.at = Target::Local(m.to);
                }
            }
            moves
        };
        for m in moves {
            self.tell(m, &slots);
        }
    }

    /// A cluster member's round: every node's DataServers, this node's
    /// agents only (see the module docs).
    fn rebalance_cluster(&self, view: &ClusterView) {
        let (slots, moves, orphans) = {
            let mut st = self.state.lock();
            self.measure(&mut st);
            let counts = st.local_counts(self.servers.len());
            let st = &mut *st;
            let slots = view.slots(&self.servers, &counts, &mut st.pending);
            for s in slots.iter().filter(|s| !s.is_remote()) {
                metrics::server_rate(&s.id, s.load);
            }
            let index: HashMap<&Target, usize> = slots
                .iter()
                .enumerate()
                .map(|(i, s)| (&s.target, i))
                .collect();
            let mut groups: BTreeMap<&str, Vec<(AgentKey, usize, f64)>> = BTreeMap::new();
            let mut orphans = Vec::new();
            for (k, h) in &st.assigned {
                let Some(&i) = index.get(&h.at) else {
                    orphans.push(*k);
                    continue;
                };
                let rate = match h.at {
                    Target::Local(_) => st.rates.get(k).copied().unwrap_or(0.0),
                    // Never measured here (assigned there at registration):
                    // that DataServer's average per link.
                    _ if h.carried <= 0.0 => slots[i].load / slots[i].links.max(1) as f64,
                    _ => h.carried,
                };
                let region = decision_region(&slots, &h.region);
                groups.entry(region).or_default().push((*k, i, rate));
            }
            let mut moves = Vec::new();
            for (region, agents) in groups {
                moves.extend(plan_region(&slots, region, &agents));
            }
            for m in &moves {
                if let Some(a) = st.assigned.get_mut(&m.agent) {
                    a.at = slots[m.to].target.clone();
                }
            }
            (slots, moves, orphans)
        };
        for m in moves {
            self.tell(m, &slots);
        }
        for agent in orphans {
            self.reassign(agent, &slots);
        }
    }

    /// Per-agent rates since the last round.
    fn measure(&self, st: &mut State) {
        let now = Instant::now();
        let elapsed = st
            .last_round
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let mut totals: HashMap<AgentKey, u64> = HashMap::new();
        for s in &self.servers {
            for (k, b) in s.totals() {
                *totals.entry(k).or_default() += b;
            }
        }
        st.rates.clear();
        if elapsed > 0.0 {
            for (k, total) in &totals {
                let before = st.last_totals.get(k).copied().unwrap_or(0);
                st.rates
                    .insert(*k, total.saturating_sub(before) as f64 / elapsed);
            }
        }
        st.last_totals = totals;
        st.last_round = Some(now);
    }

    fn tell(&self, m: Move, slots: &[Slot]) {
        let (from, to) = (&slots[m.from], &slots[m.to]);
        let reason = format!(
            "rebalance: {} is busier than {} ({:.0} B/s moved)",
            from.id, to.id, m.rate
        );
        if self.send_assign(m.agent, to, &reason) {
            metrics::agent_moved();
            tracing::info!(agent = %m.agent, from = %from.id, to = %to.id, "{reason}");
            let mut st = self.state.lock();
            if let Some(a) = st.assigned.get_mut(&m.agent) {
                a.carried = m.rate;
            }
            if from.is_remote() {
                st.pending.add(&from.id, -m.rate, -1);
            }
            if to.is_remote() {
                st.pending.add(&to.id, m.rate, 1);
            }
        } else {
            self.undo(m.agent, from.target.clone());
        }
    }

    /// Gives an agent without a DataServer (or whose DataServer's node
    /// left) the least-loaded one it can reach, if there is one now.
    fn reassign(&self, agent: AgentKey, slots: &[Slot]) {
        let Some(path) = self.link.path(agent) else {
            return;
        };
        let region = match self.state.lock().assigned.get(&agent) {
            Some(h) => h.region.clone(),
            None => return,
        };
        let Some(best) = choose(slots, path, &region) else {
            return;
        };
        let to = &slots[best];
        let reason = format!("rebalance: {} takes an agent without a DataServer", to.id);
        if !self.send_assign(agent, to, &reason) {
            return;
        }
        tracing::info!(agent = %agent, to = %to.id, "{reason}");
        let mut st = self.state.lock();
        if let Some(a) = st.assigned.get_mut(&agent) {
            a.at = to.target.clone();
        }
        if to.is_remote() {
            st.pending.add(&to.id, 0.0, 1);
        }
    }

    /// Sends `agent` a DataAssign naming `to`; false if it is gone or
    /// cannot reach `to` (it stays where it is).
    fn send_assign(&self, agent: AgentKey, to: &Slot, reason: &str) -> bool {
        let Some(endpoint) = self.link.path(agent).and_then(|p| to.endpoint_for(p)) else {
            return false;
        };
        let frame = Frame::new(
            MsgType::DataAssign,
            0,
            &DataAssign {
                endpoint,
                reason: reason.to_string(),
            },
        );
        match self.link.send_to(agent, frame) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(agent = %agent, error = %e, "cannot move the agent now");
                false
            }
        }
    }

    /// Forgets a move that was not made.
    fn undo(&self, agent: AgentKey, back: Target) {
        if let Some(a) = self.state.lock().assigned.get_mut(&agent) {
            a.at = back;
        }
    }

    /// A single node's choice at registration: the least-loaded of its
    /// DataServers by its agents' rates, then their number.
    fn assign_local(&self, st: &mut State, agent: AgentKey, path: AgentPath) -> Option<usize> {
        // (load, agents) per DataServer; one the agent cannot reach never wins.
        let mut load: Vec<(f64, usize)> = self
            .servers
            .iter()
            .map(|s| match s.endpoint.for_agent(path) {
                Some(_) => (0.0, 0),
                None => (f64::INFINITY, 0),
            })
            .collect();
        for (k, h) in &st.assigned {
            if let (true, Target::Local(s)) = (*k != agent, &h.at) {
                load[*s].0 += st.rates.get(k).copied().unwrap_or(0.0);
                load[*s].1 += 1;
            }
        }
        let best = (0..self.servers.len())
            .min_by(|a, b| {
                load[*a]
                    .0
                    .total_cmp(&load[*b].0)
                    .then(load[*a].1.cmp(&load[*b].1))
            })
            .unwrap_or(0);
        self.servers
            .get(best)
            .and_then(|s| s.endpoint.for_agent(path))
            .map(|_| best)
    }

    /// Says why a registering agent is given no DataServer.
    fn warn_unreachable(&self, agent: AgentKey, path: AgentPath, clustered: bool) {
        let data_servers = self
            .servers
            .iter()
            .map(|s| s.endpoint.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if clustered {
            tracing::warn!(
                agent = %agent,
                from = %path.peer_ip,
                data_servers = %data_servers,
                "no DataServer of the cluster is reachable for this agent (none up, or they listen on loopback \
                 only); it sends to its own [data] servers, if any, until one is. Set data.listen to an address \
                 agents reach"
            );
        } else {
            tracing::warn!(
                agent = %agent,
                from = %path.peer_ip,
                data_servers = %data_servers,
                "no DataServer of this node is reachable for an agent on another host (they listen on loopback only); \
                 it sends to its own [data] servers, if any. Set data.listen to an address agents reach"
            );
        }
    }
}

/// Moves among the DataServers of `region` ("": all) for this node's
/// agents balanced there; `agents` are (agent, slot, bytes/s). Each
/// DataServer's load besides these agents is the other nodes' share.
fn plan_region(slots: &[Slot], region: &str, agents: &[(AgentKey, usize, f64)]) -> Vec<Move> {
    let members: Vec<usize> = (0..slots.len())
        .filter(|i| in_region(&slots[*i], region))
        .collect();
    let pos: HashMap<usize, usize> = members.iter().enumerate().map(|(p, i)| (*i, p)).collect();
    let mut base: Vec<f64> = members.iter().map(|i| slots[*i].load).collect();
    let one_move: Vec<bool> = members.iter().map(|i| slots[*i].is_remote()).collect();
    let mut mine = Vec::new();
    for (k, i, r) in agents {
        // One sitting outside its region's DataServers stays put.
        let Some(&p) = pos.get(i) else { continue };
        base[p] -= r;
        mine.push((*k, p, *r));
    }
    for b in &mut base {
        *b = b.max(0.0);
    }
    plan_moves_over(&base, &one_move, &mine)
        .into_iter()
        .map(|m| Move {
            from: members[m.from],
            to: members[m.to],
            ..m
        })
        .collect()
}

impl DataAssigner for Balancer {
    fn for_proxy(&self, path: AgentPath) -> String {
        // This node's least-loaded DataServer the proxy reaches, else in a
        // cluster any node's; its channels there are not assigned agents
        // (the proxy's link is what would move, not them).
        let mut st = self.state.lock();
        let st = &mut *st;
        let none = AgentKey::new(-1, std::net::Ipv4Addr::UNSPECIFIED.into());
        let local = self
            .assign_local(st, none, path)
            .and_then(|i| self.servers[i].endpoint.for_agent(path));
        if let Some(endpoint) = local {
            return endpoint;
        }
        let Some(view) = self.cluster.get() else {
            return String::new();
        };
        let counts = st.local_counts(self.servers.len());
        let slots = view.slots(&self.servers, &counts, &mut st.pending);
        choose(&slots, path, "")
            .and_then(|i| slots[i].endpoint_for(path))
            .unwrap_or_default()
    }

    fn assign(&self, agent: AgentKey, held: Delivery, path: AgentPath, region: &str) -> String {
        let mut st = self.state.lock();
        let st = &mut *st;
        let (at, endpoint) = match self.cluster.get() {
            None => {
                let best = self.assign_local(st, agent, path);
                match best {
                    Some(i) => (Target::Local(i), self.servers[i].endpoint.for_agent(path)),
                    None => (Target::Unassigned, None),
                }
            }
            Some(view) => {
                let counts = st.local_counts(self.servers.len());
                let slots = view.slots(&self.servers, &counts, &mut st.pending);
                match choose(&slots, path, region) {
                    Some(i) => {
                        if slots[i].is_remote() {
                            st.pending.add(&slots[i].id, 0.0, 1);
                        }
                        (slots[i].target.clone(), slots[i].endpoint_for(path))
                    }
                    None => (Target::Unassigned, None),
                }
            }
        };
        let clustered = self.cluster.get().is_some();
        let Some(endpoint) = endpoint else {
            self.warn_unreachable(agent, path, clustered);
            if clustered {
                // Given one in a later round, once one is up.
                st.assigned.insert(
                    agent,
                    Held {
                        at: Target::Unassigned,
                        held,
                        region: region.to_string(),
                        carried: 0.0,
                    },
                );
            }
            return String::new();
        };
        st.assigned.insert(
            agent,
            Held {
                at,
                held,
                region: region.to_string(),
                carried: 0.0,
            },
        );
        endpoint
    }
}

impl AgentFrames for Balancer {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        tracing::debug!(agent = %agent, msg_type = frame.msg_type.to_u16(), "ignoring a data-assignment frame from an agent");
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        let mut st = self.state.lock();
        if st.assigned.get(&agent).is_some_and(|h| h.held == ended) {
            st.assigned.remove(&agent);
        }
    }
}

#[cfg(test)]
mod tests;

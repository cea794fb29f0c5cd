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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gse_core::AgentKey;
use gse_proto::link::DataAssign;
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DataEndpoint, metrics};
use crate::cluster::sender::Delivery;
use crate::role::link::{AgentFrames, AgentPath, DataAssigner, LinkService};

/// Differences in load below this many bytes/s are not worth a move.
pub const MIN_SPREAD: f64 = 16.0 * 1024.0;
/// ... nor those below this share of the busier DataServer's load.
pub const MIN_SPREAD_SHARE: f64 = 0.2;

/// What one agent sent to one DataServer.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

/// One DataServer's identity and counters.
#[derive(Debug)]
pub struct ServerLoad {
    pub index: usize,
    /// `<node>/data<index>`, for logs and metric labels.
    pub id: String,
    /// Where agents are told to dial it.
    pub endpoint: DataEndpoint,
    links: AtomicUsize,
    per_agent: Mutex<HashMap<AgentKey, Arc<AgentCounters>>>,
}

// === impl ServerLoad ===

impl ServerLoad {
    pub fn new(index: usize, id: String, endpoint: DataEndpoint) -> ServerLoad {
        ServerLoad {
            index,
            id,
            endpoint,
            links: AtomicUsize::new(0),
            per_agent: Mutex::default(),
        }
    }

    /// A data link of `agent` opened; its counters.
    pub fn attach(&self, agent: AgentKey) -> Arc<AgentCounters> {
        let n = self.links.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::agents(&self.id, n);
        self.per_agent.lock().entry(agent).or_default().clone()
    }

    pub fn detach(&self) {
        let n = self.links.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::agents(&self.id, n);
    }

    /// Data links open now.
    pub fn links(&self) -> usize {
        self.links.load(Ordering::Relaxed)
    }

    /// Total bytes per agent so far.
    fn totals(&self) -> Vec<(AgentKey, u64)> {
        self.per_agent
            .lock()
            .iter()
            .map(|(k, c)| (*k, c.bytes.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One planned move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Move {
    pub agent: AgentKey,
    pub from: usize,
    pub to: usize,
    pub rate: f64,
}

/// Plans moves that narrow the spread between the most and least loaded
/// servers; `agents` are (agent, assigned server, bytes/s).
pub fn plan_moves(servers: usize, agents: &[(AgentKey, usize, f64)]) -> Vec<Move> {
    let mut load = vec![0.0; servers];
    let mut at: Vec<(AgentKey, usize, f64)> = agents.to_vec();
    for (_, s, r) in &at {
        load[*s] += r;
    }
    let mut moves = Vec::new();
    for _ in 0..agents.len() {
        let (hi, lo) = extremes(&load);
        let spread = load[hi] - load[lo];
        if servers < 2 || spread <= MIN_SPREAD || spread <= MIN_SPREAD_SHARE * load[hi] {
            break;
        }
        let best = at
            .iter_mut()
            .filter(|(_, s, r)| *s == hi && *r > 0.0 && *r < spread)
            .min_by(|a, b| {
                let da = (a.2 - spread / 2.0).abs();
                let db = (b.2 - spread / 2.0).abs();
                da.total_cmp(&db)
            });
        let Some(agent) = best else { break };
        agent.1 = lo;
        load[hi] -= agent.2;
        load[lo] += agent.2;
        moves.push(Move {
            agent: agent.0,
            from: hi,
            to: lo,
            rate: agent.2,
        });
    }
    moves
}

/// Indexes of the most and the least loaded server (lowest index on ties).
fn extremes(load: &[f64]) -> (usize, usize) {
    let mut hi = 0;
    let mut lo = 0;
    for (i, l) in load.iter().enumerate() {
        if *l > load[hi] {
            hi = i;
        }
        if *l < load[lo] {
            lo = i;
        }
    }
    (hi, lo)
}

#[derive(Default)]
struct State {
    /// agent -> (server, control connection id)
    assigned: HashMap<AgentKey, (usize, Delivery)>,
    /// Bytes per agent at the last round.
    last_totals: HashMap<AgentKey, u64>,
    /// Rates measured at the last round, bytes/s.
    rates: HashMap<AgentKey, f64>,
    last_round: Option<Instant>,
}

/// Assigns and moves agents; see the module docs.
pub struct Balancer {
    servers: Vec<Arc<ServerLoad>>,
    link: Arc<LinkService>,
    state: Mutex<State>,
}

// === impl Balancer ===

impl Balancer {
    pub fn new(servers: Vec<Arc<ServerLoad>>, link: Arc<LinkService>) -> Arc<Balancer> {
        Arc::new(Balancer {
            servers,
            link,
            state: Mutex::default(),
        })
    }

    /// Rebalances every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => self.rebalance(),
            }
        }
    }

    /// One round: measure, plan, tell the moved agents.
    pub fn rebalance(&self) {
        let moves = {
            let mut st = self.state.lock();
            self.measure(&mut st);
            let agents: Vec<_> = st
                .assigned
                .iter()
                .map(|(k, (s, _))| (*k, *s, st.rates.get(k).copied().unwrap_or(0.0)))
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
                    a.0 = m.to;
                }
            }
            moves
        };
        for m in moves {
            self.tell(m);
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

    fn tell(&self, m: Move) {
        let to = &self.servers[m.to];
        let Some(endpoint) = self
            .link
            .path(m.agent)
            .and_then(|path| to.endpoint.for_agent(path))
        else {
            // Gone, or it cannot reach that DataServer: it stays put.
            self.undo(m);
            return;
        };
        let reason = format!(
            "rebalance: {} is busier than {} ({:.0} B/s moved)",
            self.servers[m.from].id, to.id, m.rate
        );
        let frame = Frame::new(
            MsgType::DataAssign,
            0,
            &DataAssign {
                endpoint,
                reason: reason.clone(),
            },
        );
        match self.link.send_to(m.agent, frame) {
            Ok(_) => {
                metrics::agent_moved();
                tracing::info!(agent = %m.agent, from = %self.servers[m.from].id, to = %to.id, "{reason}");
            }
            Err(e) => {
                tracing::debug!(agent = %m.agent, error = %e, "cannot move the agent now");
                self.undo(m);
            }
        }
    }

    /// Forgets a move that was not made.
    fn undo(&self, m: Move) {
        if let Some(a) = self.state.lock().assigned.get_mut(&m.agent) {
            a.0 = m.from;
        }
    }
}

impl DataAssigner for Balancer {
    fn assign(&self, agent: AgentKey, held: Delivery, path: AgentPath) -> String {
        let mut st = self.state.lock();
        // (load, agents) per DataServer; one the agent cannot reach never wins.
        let mut load: Vec<(f64, usize)> = self
            .servers
            .iter()
            .map(|s| match s.endpoint.for_agent(path) {
                Some(_) => (0.0, 0),
                None => (f64::INFINITY, 0),
            })
            .collect();
        for (k, (s, _)) in &st.assigned {
            if *k != agent {
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
        let Some(endpoint) = self.servers[best].endpoint.for_agent(path) else {
            tracing::warn!(
                agent = %agent,
                from = %path.peer_ip,
                data_servers = %self.servers.iter().map(|s| s.endpoint.to_string()).collect::<Vec<_>>().join(", "),
                "no DataServer of this node is reachable for an agent on another host (they listen on loopback only); \
                 it sends to its own [data] servers, if any. Set data.listen to an address agents reach"
            );
            return String::new();
        };
        st.assigned.insert(agent, (best, held));
        endpoint
    }
}

impl AgentFrames for Balancer {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        tracing::debug!(agent = %agent, msg_type = frame.msg_type.to_u16(), "ignoring a data-assignment frame from an agent");
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        let mut st = self.state.lock();
        if st
            .assigned
            .get(&agent)
            .is_some_and(|(_, held)| *held == ended)
        {
            st.assigned.remove(&agent);
        }
    }
}

#[cfg(test)]
mod tests;

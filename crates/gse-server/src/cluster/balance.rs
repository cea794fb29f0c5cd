//! K2 balance by connections, K5 regions.
//!
//! Every node decides for itself, from the registry's load figures (each
//! node publishes its agent count within about a second of a change) and
//! its own live count:
//! - at registration ([`Balancer`] as the link's [`Redirector`]): a node
//!   that would hold more than its fair share plus a slack answers with a
//!   redirect to the least-loaded node; an agent whose region has nodes up
//!   is always sent to one of them. A redirected agent is accepted without
//!   a further redirect (the link's part), so nobody bounces.
//! - later ([`run`]): the most loaded node among an agent's candidates,
//!   holding more than the least-loaded one by more than one agent or 5%
//!   for a while (`SETTLE`, as figures lag), hands agents over, one per
//!   tick at `[cluster] rebalance_per_s` with jitter, so a joining node
//!   fills gradually and agents never reconnect in a storm.
//!
//! Figures in the registry lag; a node counts the agents it sent to each
//! node lately ([`Sent`]) on top of the figure, so a burst of registrations
//! does not all go to the one node that looked emptiest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::{NodeInfo, Registry};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::role::link::{LinkService, Redirector};

/// How long an agent sent to a node counts on top of that node's published
/// figure: the announce loop's check period plus the registry's default
/// refresh (2 s), with room to spare.
const SENT_COUNTS_FOR: Duration = Duration::from_secs(5);
/// How long an imbalance must last before agents are handed over: other
/// nodes' figures lag by the announce check (1 s) plus the registry's
/// refresh (2 s by default), and acting on a figure from before a burst of
/// registrations would move agents back and forth.
const SETTLE: Duration = Duration::from_secs(5);

/// Nodes an agent of `region` is balanced over: the nodes taking agents
/// (with an agent address) of its region, or every such node when the
/// agent has no region or none of its region is up (K5).
pub fn candidates<'a>(nodes: &'a [NodeInfo], region: &str) -> Vec<&'a NodeInfo> {
    let linked = nodes.iter().filter(|n| !n.agent_addr.is_empty());
    let regional: Vec<&NodeInfo> = linked
        .clone()
        .filter(|n| !region.is_empty() && n.region == region)
        .collect();
    if regional.is_empty() {
        linked.collect()
    } else {
        regional
    }
}

/// The least-loaded node (ties by node id, so every node picks the same).
fn least<'a>(nodes: &[&'a NodeInfo]) -> Option<&'a NodeInfo> {
    nodes
        .iter()
        .min_by(|a, b| (a.agents, &a.node_id).cmp(&(b.agents, &b.node_id)))
        .copied()
}

/// What a node may hold above the fair share: one agent or 5%.
pub fn slack(share: f64) -> f64 {
    (share * 0.05).max(1.0)
}

/// How far apart two nodes' counts may be once balanced: one agent or 5%
/// of the larger.
pub fn tolerance(count: u64) -> u64 {
    count.div_ceil(20).max(1)
}

/// At registration: where node `me` sends an agent of `region` instead of
/// taking it, or `None` to take it: when taking it would put this node
/// above its fair share plus [`slack`], or further above the least-loaded
/// node than the hand-over rule allows (so what registration builds,
/// hand-over leaves alone). `nodes` carry the current figures (this node's
/// own live count included).
pub fn redirect_target<'a>(nodes: &'a [NodeInfo], me: &str, region: &str) -> Option<&'a NodeInfo> {
    let candidates = candidates(nodes, region);
    let least = least(&candidates)?;
    let Some(mine) = candidates.iter().find(|n| n.node_id == me) else {
        // Not a node of the agent's region, which has nodes up.
        return Some(least);
    };
    let total: u64 = candidates.iter().map(|n| n.agents).sum::<u64>() + 1;
    let share = total as f64 / candidates.len() as f64;
    let after = mine.agents + 1;
    let over = after as f64 > share + slack(share)
        || after.saturating_sub(least.agents) > tolerance(after);
    (over && least.agents < mine.agents).then_some(least)
}

/// Later: where node `me` hands over one of its agents of `region`, or
/// `None` when it holds no more than the least-loaded candidate by
/// [`tolerance`]. Only the most loaded nodes give agents away, so a node
/// that just received some does not pass them on while figures settle.
pub fn hand_over_target<'a>(nodes: &'a [NodeInfo], me: &str, region: &str) -> Option<&'a NodeInfo> {
    let candidates = candidates(nodes, region);
    let least = least(&candidates)?;
    let Some(mine) = candidates.iter().find(|n| n.node_id == me) else {
        return Some(least);
    };
    let most = candidates.iter().all(|n| n.agents <= mine.agents);
    (most && mine.agents.saturating_sub(least.agents) > tolerance(mine.agents)).then_some(least)
}

/// The regions whose agents have their own decision: every node's region.
/// An agent of any other region (or none) is balanced over the whole
/// cluster, decided under `""`.
pub fn decision_region<'a>(nodes: &[NodeInfo], agent_region: &'a str) -> &'a str {
    if !agent_region.is_empty() && nodes.iter().any(|n| n.region == agent_region) {
        agent_region
    } else {
        ""
    }
}

/// Agents this node sent to each node lately, counted on top of that
/// node's published figure until it has had time to publish them.
#[derive(Default)]
struct Sent(Mutex<HashMap<String, Vec<Instant>>>);

impl Sent {
    fn record(&self, node_id: &str) {
        self.0
            .lock()
            .entry(node_id.to_string())
            .or_default()
            .push(Instant::now());
    }

    /// Adds the recent ones to `nodes`' figures (dropping the old ones).
    fn apply(&self, nodes: &mut [NodeInfo]) {
        let mut sent = self.0.lock();
        sent.retain(|_, at| {
            at.retain(|t| t.elapsed() < SENT_COUNTS_FOR);
            !at.is_empty()
        });
        for n in nodes {
            if let Some(at) = sent.get(&n.node_id) {
                n.agents += at.len() as u64;
            }
        }
    }
}

/// This node's balancing: redirects at registration and the hand-over loop.
pub struct Balancer {
    me: String,
    registry: Arc<dyn Registry>,
    link: Arc<LinkService>,
    sent: Sent,
    /// Since when this node has seen itself holding too many (None: it
    /// does not).
    imbalanced_since: Mutex<Option<Instant>>,
}

impl Balancer {
    pub fn new(me: String, registry: Arc<dyn Registry>, link: Arc<LinkService>) -> Arc<Self> {
        Arc::new(Balancer {
            me,
            registry,
            link,
            sent: Sent::default(),
            imbalanced_since: Mutex::new(None),
        })
    }

    /// The cluster as this node sees it now: the registry's figures, this
    /// node's own live count (agents being handed over left out), plus
    /// what it sent to others lately and the agents on their way to them
    /// (asked to move, waiting for their work to end).
    fn view(&self) -> Vec<NodeInfo> {
        let mut nodes = self.registry.watch().borrow().clone();
        // An agent that went counts at its node until the node's figure
        // has it; one still waiting to go counts there already.
        for to in self.link.handed_over() {
            if let Some(n) = nodes.iter().find(|n| n.agent_addr == to) {
                self.sent.record(&n.node_id);
            }
        }
        let pending = self.link.handing_over();
        for n in nodes.iter_mut() {
            n.agents += pending.get(&n.agent_addr).copied().unwrap_or(0) as u64;
        }
        self.sent.apply(&mut nodes);
        let mine = self.link.balanced() as u64;
        for n in nodes.iter_mut().filter(|n| n.node_id == self.me) {
            n.agents = mine;
        }
        nodes
    }

    /// Hands one agent over, if this node holds too many; true if it did.
    fn hand_over_one(&self) -> bool {
        let nodes = self.view();
        if !nodes.iter().any(|n| n.node_id == self.me) {
            // Not announced yet (or our entry is being rewritten): no
            // figures to compare with.
            return false;
        }
        let mut targets: HashMap<&str, Option<&NodeInfo>> = HashMap::new();
        targets.insert("", hand_over_target(&nodes, &self.me, ""));
        for n in &nodes {
            targets
                .entry(n.region.as_str())
                .or_insert_with(|| hand_over_target(&nodes, &self.me, &n.region));
        }
        if targets.values().all(Option::is_none) {
            *self.imbalanced_since.lock() = None;
            return false;
        }
        let since = *self
            .imbalanced_since
            .lock()
            .get_or_insert_with(Instant::now);
        if since.elapsed() < SETTLE {
            return false;
        }
        let moved = self.link.hand_over_one(|agent_region| {
            let region = decision_region(&nodes, agent_region);
            targets
                .get(region)
                .copied()
                .flatten()
                .map(|n| n.agent_addr.clone())
        });
        // Counted at its target from now on (`view`).
        moved.is_some()
    }
}

impl Redirector for Balancer {
    fn redirect(&self, region: &str) -> Option<String> {
        let nodes = self.view();
        if !nodes.iter().any(|n| n.node_id == self.me) {
            return None;
        }
        let target = redirect_target(&nodes, &self.me, region)?;
        self.sent.record(&target.node_id);
        Some(target.agent_addr.clone())
    }
}

/// Hands agents over at most `per_s` a second (each pause jittered by
/// +-50%) until shutdown; `per_s` 0: never.
pub async fn run(balancer: Arc<Balancer>, per_s: u32, shutdown: CancellationToken) {
    if per_s == 0 {
        return;
    }
    let period = Duration::from_secs(1) / per_s;
    loop {
        let pause = period.mul_f64(rand::random_range(0.5..1.5));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        balancer.hand_over_one();
    }
}

#[cfg(test)]
mod tests;

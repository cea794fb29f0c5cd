//! Peer sets (F1, F8, F9, C4): who each target and relay of a task may fetch
//! pieces from. Pure: [`plan`] takes the task's agents with their zones and
//! P2P addresses and returns every peer set, or why a target is cut off.
//!
//! Rules (Zs = the source's zone; "" is the default zone):
//! - a target in Zs peers with the source and the other Zs targets;
//! - zone chain hop 1's relays peer with the source, the Zs targets and each
//!   other; hop i's relays (i > 1) with hop i-1's relays, the targets in
//!   hop i-1's zone and each other;
//! - a target in hop i's zone peers with hop i's relays and the other
//!   targets of that zone, never with the source: one copy crosses each
//!   zone boundary;
//! - a pass-through (A -> B) adds zone A's holders to the peers of B's
//!   targets (A must itself be reached);
//! - a target whose zone none of these reaches is refused (707);
//! - peers share a cloud area (`bk_cloud_id`): agents of different areas
//!   cannot reach each other. A target of another area than the source's
//!   peers only with the targets of its own area and zone; it is reached
//!   through its area's proxy, which fetches each piece upstream once and
//!   serves it to the area (F8, issue 12), never refused for its zone.
//!
//! Only agents with a P2P address can be peers. Each set holds at most
//! `limit` peers: the source and relays first, then a random sample of the
//! others, so that load spreads over the zone.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use gse_proto::link::Peer;
use rand::Rng;
use rand::seq::SliceRandom;

use super::spec::ZonePair;

/// Extra draws when sampling a pool, for the agent itself and duplicates.
const SAMPLE_SLACK: usize = 4;

/// An agent as the tracker sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `cloud:ip`.
    pub agent: String,
    pub zone: String,
    /// Its P2P listener; `None` = it serves no pieces.
    pub addr: Option<SocketAddr>,
    /// Its cloud area (`bk_cloud_id`).
    pub area: i64,
}

/// One hop of a zone chain; a relay that cannot take part is `None`.
#[derive(Clone, Debug)]
pub struct Hop {
    pub zone: String,
    pub relays: Vec<Option<Member>>,
}

/// One task's agents.
pub struct Topology<'a> {
    pub source: &'a Member,
    /// `None` = a target that takes no part (already failed).
    pub targets: &'a [Option<Member>],
    pub hops: &'a [Hop],
    /// Pass-throughs the server config allowed for this transfer.
    pub pass_through: &'a [ZonePair],
}

/// Every peer set of a task.
#[derive(Debug, Default)]
pub struct PeerPlan {
    /// Per target (same order): its peers, or the message of its 707;
    /// `None` where the topology had no member.
    pub targets: Vec<Option<Result<Vec<Peer>, String>>>,
    /// Per hop, per relay: its peers; `None` where the relay is unavailable.
    pub relays: Vec<Vec<Option<Vec<Peer>>>>,
}

/// Where a set's candidates come from: holders that go first, then pools
/// sampled at random.
#[derive(Default)]
struct Candidates<'a> {
    first: Vec<(&'a Member, bool)>,
    pools: Vec<&'a [&'a Member]>,
}

/// The zones of a task and who holds pieces in each.
struct Zones<'a> {
    source: &'a Member,
    /// Targets that can serve pieces, by cloud area and zone.
    targets: HashMap<(i64, String), Vec<&'a Member>>,
    /// Relays that can serve pieces, per hop.
    relays: Vec<Vec<&'a Member>>,
    /// The first hop into each zone, and each hop's zone.
    hop_of: HashMap<&'a str, usize>,
    hop_zones: Vec<&'a str>,
    /// Zones the content reaches.
    reached: HashSet<&'a str>,
    pass_through: &'a [ZonePair],
}

/// Computes every peer set of a task; see the module doc for the rules.
pub fn plan(top: &Topology<'_>, limit: usize, rng: &mut impl Rng) -> PeerPlan {
    let zones = Zones::new(top);
    let targets = top
        .targets
        .iter()
        .map(|t| t.as_ref().map(|m| zones.target_peers(m, limit, rng)))
        .collect();
    let relays = top
        .hops
        .iter()
        .enumerate()
        .map(|(i, hop)| {
            hop.relays
                .iter()
                .map(|r| {
                    r.as_ref()
                        .map(|m| pick(&zones.relay_candidates(i), &m.agent, limit, rng))
                })
                .collect()
        })
        .collect();
    PeerPlan { targets, relays }
}

// === impl Zones ===

impl<'a> Zones<'a> {
    fn new(top: &Topology<'a>) -> Self {
        let mut targets: HashMap<(i64, String), Vec<&Member>> = HashMap::new();
        for m in top.targets.iter().flatten().filter(|m| m.addr.is_some()) {
            targets.entry((m.area, m.zone.clone())).or_default().push(m);
        }
        let relays = top
            .hops
            .iter()
            .map(|h| {
                h.relays
                    .iter()
                    .flatten()
                    .filter(|m| m.addr.is_some())
                    .collect()
            })
            .collect();
        let mut hop_of = HashMap::new();
        for (i, hop) in top.hops.iter().enumerate() {
            hop_of.entry(hop.zone.as_str()).or_insert(i);
        }
        let mut reached: HashSet<&str> = hop_of.keys().copied().collect();
        reached.insert(top.source.zone.as_str());
        // Pass-throughs may chain (a -> b, b -> c): repeat until stable.
        loop {
            let before = reached.len();
            for p in top.pass_through {
                if reached.contains(p.from_zone.as_str()) {
                    reached.insert(p.to_zone.as_str());
                }
            }
            if reached.len() == before {
                break;
            }
        }
        Zones {
            source: top.source,
            targets,
            relays,
            hop_of,
            hop_zones: top.hops.iter().map(|h| h.zone.as_str()).collect(),
            reached,
            pass_through: top.pass_through,
        }
    }

    /// Adds the holders of `zone`: the source and the zone's relays first,
    /// its targets as a pool.
    fn add_zone<'z>(&'z self, zone: &str, c: &mut Candidates<'z>) {
        if zone == self.source.zone {
            c.first.push((self.source, true));
        }
        if let Some(&hop) = self.hop_of.get(zone) {
            c.first.extend(self.relays[hop].iter().map(|m| (*m, false)));
        }
        if let Some(pool) = self.targets.get(&(self.source.area, zone.to_string())) {
            c.pools.push(pool);
        }
    }

    fn target_peers(
        &self,
        me: &Member,
        limit: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<Peer>, String> {
        let zone = me.zone.as_str();
        if me.area != self.source.area {
            // Reached through its area's proxy; peers in its area only.
            let mut c = Candidates::default();
            if let Some(pool) = self.targets.get(&(me.area, zone.to_string())) {
                c.pools.push(pool);
            }
            return Ok(pick(&c, &me.agent, limit, rng));
        }
        if !self.reached.contains(zone) {
            return Err(isolated(me, &self.source.zone));
        }
        let mut c = Candidates::default();
        self.add_zone(zone, &mut c);
        for p in self.pass_through.iter().filter(|p| p.to_zone == zone) {
            if self.reached.contains(p.from_zone.as_str()) {
                self.add_zone(&p.from_zone, &mut c);
            }
        }
        Ok(pick(&c, &me.agent, limit, rng))
    }

    /// Hop `i`'s relays fetch from the zone before them (the source's for
    /// the first hop) and from each other.
    fn relay_candidates(&self, i: usize) -> Candidates<'_> {
        let mut c = Candidates::default();
        let prev_zone = if i == 0 {
            c.first.push((self.source, true));
            self.source.zone.as_str()
        } else {
            c.first
                .extend(self.relays[i - 1].iter().map(|m| (*m, false)));
            self.hop_zones[i - 1]
        };
        if let Some(pool) = self.targets.get(&(self.source.area, prev_zone.to_string())) {
            c.pools.push(pool);
        }
        c.pools.push(&self.relays[i]);
        c
    }
}

/// The 707 message of a target no rule reaches.
fn isolated(me: &Member, source_zone: &str) -> String {
    let zone = &me.zone;
    format!(
        "target {} is in zone {zone:?}, isolated from the source's zone {source_zone:?}: name a zone_chain relay for zone {zone:?} or ask the operator for a [[file.pass_through]] from {source_zone:?} to {zone:?}",
        me.agent
    )
}

/// At most `limit` peers for `me`: the `first` ones (source first, relays
/// shuffled), then a random sample of the pools; never `me` itself (but
/// the source even when `me` is the source's own agent), never twice.
fn pick<'c>(c: &Candidates<'c>, me: &str, limit: usize, rng: &mut impl Rng) -> Vec<Peer> {
    let mut out: Vec<Peer> = Vec::with_capacity(limit.min(64));
    let mut seen: HashSet<&'c str> = HashSet::new();
    let mut push = |m: &'c Member, is_source: bool, out: &mut Vec<Peer>| {
        let Some(addr) = m.addr else { return };
        if out.len() >= limit || (m.agent == me && !is_source) || !seen.insert(m.agent.as_str()) {
            return;
        }
        out.push(Peer {
            agent: m.agent.clone(),
            addr: addr.to_string(),
            is_source,
        });
    };
    let mut first = c.first.clone();
    // The source (if any) stays first; relays share the load.
    let split = usize::from(first.first().is_some_and(|(_, s)| *s));
    first[split..].shuffle(rng);
    for (m, is_source) in first {
        push(m, is_source, &mut out);
    }
    let total: usize = c.pools.iter().map(|p| p.len()).sum();
    let need = limit.saturating_sub(out.len());
    if need == 0 || total == 0 {
        return out;
    }
    // The i-th member of the pools laid end to end.
    let at = |mut i: usize| -> Option<&'c Member> {
        for pool in &c.pools {
            if i < pool.len() {
                return Some(pool[i]);
            }
            i -= pool.len();
        }
        None
    };
    let draws = total.min(need + SAMPLE_SLACK);
    for m in rand::seq::index::sample(rng, total, draws)
        .into_iter()
        .filter_map(at)
    {
        push(m, false, &mut out);
    }
    if out.len() < limit && draws < total {
        // Many duplicates in the sample: go through everyone.
        for m in rand::seq::index::sample(rng, total, total)
            .into_iter()
            .filter_map(at)
        {
            push(m, false, &mut out);
        }
    }
    out
}

//! The holding node's side of relayed streams: which node a frame from an
//! agent answers.
//!
//! When another node sends a frame for an agent held here, the frame goes
//! to the agent on a stream id of this node's choosing (high bit set, so it
//! never meets an id this node's own roles use), and the relay remembers
//! which node sent it and on which of its streams. The agent answers on
//! that id (it echoes the stream of what it answers), so its frames go back
//! to the sending node by their header alone: bodies are not decoded.
//!
//! Open streams end with the agent's link (the sending nodes are told, see
//! [`Relay::agent_gone`]) and are bounded per agent: past
//! [`MAX_STREAMS_PER_AGENT`] the least recently used is dropped (and its
//! node told), so a node that never closes streams cannot grow this table
//! without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use gse_core::AgentKey;
use parking_lot::Mutex;

/// Open relayed streams one agent may have.
pub const MAX_STREAMS_PER_AGENT: usize = 1024;

/// Stream ids this node picks for relayed frames have this bit set.
const RELAY_BIT: u64 = 1 << 63;

/// Where an agent's answer on a relayed stream goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node_id: String,
    /// The stream as the sending node numbered it.
    pub stream_id: u64,
    /// The type of the frame that opened the stream.
    pub msg_type: u16,
    /// The claim epoch the sending node located the agent at.
    pub epoch: u64,
}

#[derive(Default)]
struct Streams {
    by_id: HashMap<u64, (Origin, u64)>,
}

/// See the module doc.
#[derive(Default)]
pub struct Relay {
    agents: Mutex<HashMap<AgentKey, Streams>>,
    next: AtomicU64,
    /// Use stamp for least-recently-used eviction.
    clock: AtomicU64,
}

impl Relay {
    /// Opens a stream for `origin`'s frame to `agent`; returns the stream id
    /// to send it on, and the stream it displaced, if the agent had too many.
    pub fn open(&self, agent: AgentKey, origin: Origin) -> (u64, Option<Origin>) {
        let id = RELAY_BIT | (self.next.fetch_add(1, Ordering::Relaxed) & !RELAY_BIT);
        let stamp = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut agents = self.agents.lock();
        let streams = agents.entry(agent).or_default();
        let mut evicted = None;
        if streams.by_id.len() >= MAX_STREAMS_PER_AGENT {
            let oldest = streams
                .by_id
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                evicted = streams.by_id.remove(&oldest).map(|(o, _)| o);
            }
        }
        streams.by_id.insert(id, (origin, stamp));
        (id, evicted)
    }

    /// Where a frame from `agent` on `stream_id` goes; `None`: not a relayed
    /// stream (this node's own roles take it).
    pub fn answer(&self, agent: AgentKey, stream_id: u64) -> Option<Origin> {
        if stream_id & RELAY_BIT == 0 {
            return None;
        }
        let stamp = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut agents = self.agents.lock();
        let (origin, used) = agents.get_mut(&agent)?.by_id.get_mut(&stream_id)?;
        *used = stamp;
        Some(origin.clone())
    }

    /// Forgets one stream (its frame never reached the agent).
    pub fn close(&self, agent: AgentKey, stream_id: u64) {
        let mut agents = self.agents.lock();
        if let Some(streams) = agents.get_mut(&agent) {
            streams.by_id.remove(&stream_id);
            if streams.by_id.is_empty() {
                agents.remove(&agent);
            }
        }
    }

    /// The agent's link ended: every stream it had, to tell their nodes.
    pub fn agent_gone(&self, agent: AgentKey) -> Vec<Origin> {
        self.agents
            .lock()
            .remove(&agent)
            .map(|s| s.by_id.into_values().map(|(o, _)| o).collect())
            .unwrap_or_default()
    }

    /// A node left: its streams are forgotten (nobody is there to answer).
    pub fn node_gone(&self, node_id: &str) {
        let mut agents = self.agents.lock();
        for streams in agents.values_mut() {
            streams.by_id.retain(|_, (o, _)| o.node_id != node_id);
        }
        agents.retain(|_, s| !s.by_id.is_empty());
    }

    /// Open relayed streams, all agents.
    pub fn open_streams(&self) -> usize {
        self.agents.lock().values().map(|s| s.by_id.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> AgentKey {
        format!("0:10.0.0.{last}").parse().unwrap()
    }

    fn origin(node: &str, stream_id: u64) -> Origin {
        Origin {
            node_id: node.into(),
            stream_id,
            msg_type: 0x100,
            epoch: 1,
        }
    }

    #[test]
    fn answers_go_back_to_the_node_that_opened_the_stream() {
        let relay = Relay::default();
        let (a, _) = relay.open(key(1), origin("n1", 0));
        let (b, _) = relay.open(key(1), origin("n2", 0));
        assert_ne!(a, b);
        assert_eq!(relay.answer(key(1), a).unwrap().node_id, "n1");
        assert_eq!(relay.answer(key(1), b).unwrap().node_id, "n2");
        // Another agent's answer on the same id is not a relayed one.
        assert_eq!(relay.answer(key(2), a), None);
        // This node's own streams never look relayed.
        assert_eq!(relay.answer(key(1), 0), None);
        assert_eq!(relay.answer(key(1), 7), None);
    }

    #[test]
    fn a_link_that_ends_returns_its_streams_once() {
        let relay = Relay::default();
        relay.open(key(1), origin("n1", 5));
        relay.open(key(1), origin("n2", 6));
        let mut gone = relay.agent_gone(key(1));
        gone.sort_by_key(|o| o.stream_id);
        assert_eq!(gone, vec![origin("n1", 5), origin("n2", 6)]);
        assert!(relay.agent_gone(key(1)).is_empty());
        assert_eq!(relay.open_streams(), 0);
    }

    #[test]
    fn streams_per_agent_are_bounded_least_recently_used_first() {
        let relay = Relay::default();
        let (first, _) = relay.open(key(1), origin("n1", 0));
        let (second, _) = relay.open(key(1), origin("n1", 1));
        relay.answer(key(1), first); // used: `second` is now the oldest
        for i in 2..MAX_STREAMS_PER_AGENT as u64 {
            assert_eq!(relay.open(key(1), origin("n1", i)).1, None);
        }
        let (_, evicted) = relay.open(key(1), origin("n1", 9999));
        assert_eq!(evicted, Some(origin("n1", 1)));
        assert!(relay.answer(key(1), second).is_none());
        assert!(relay.answer(key(1), first).is_some());
        assert_eq!(relay.open_streams(), MAX_STREAMS_PER_AGENT);
    }

    #[test]
    fn a_node_that_leaves_takes_its_streams() {
        let relay = Relay::default();
        let (a, _) = relay.open(key(1), origin("n1", 0));
        let (b, _) = relay.open(key(1), origin("n2", 0));
        relay.node_gone("n1");
        assert!(relay.answer(key(1), a).is_none());
        assert!(relay.answer(key(1), b).is_some());
    }
}

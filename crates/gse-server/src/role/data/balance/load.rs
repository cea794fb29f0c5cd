//! What each DataServer measures for D4: its data links and the bytes each
//! agent sent it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use gse_core::AgentKey;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::role::data::{DataEndpoint, metrics};

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
    /// Bytes/s over the last [`ServerLoad::sample`] interval.
    rate: AtomicU64,
    /// Total bytes and when, at the last sample.
    sampled: Mutex<Option<(Instant, u64)>>,
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
            rate: AtomicU64::new(0),
            sampled: Mutex::new(None),
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
    pub(super) fn totals(&self) -> Vec<(AgentKey, u64)> {
        self.per_agent
            .lock()
            .iter()
            .map(|(k, c)| (*k, c.bytes.load(Ordering::Relaxed)))
            .collect()
    }

    /// Measures the bytes/s received since the previous sample, from every
    /// agent of every node ([`ServerLoad::rate`] until the next one).
    pub fn sample(&self) {
        let total: u64 = self.totals().iter().map(|(_, b)| b).sum();
        let now = Instant::now();
        let mut sampled = self.sampled.lock();
        if let Some((at, before)) = *sampled {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rate = total.saturating_sub(before) as f64 / secs;
                self.rate.store(rate as u64, Ordering::Relaxed);
            }
        }
        *sampled = Some((now, total));
    }

    /// Bytes/s over the last sample interval (0 before the second sample).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }
}

//! System snapshots (D3) on the server: [`SnapshotCache`] keeps, per agent,
//! the snapshots that arrived in the last `window` (default one minute).
//!
//! It is a data tap: the DataServer hands it every record of the snapshot
//! data id (`data.snapshot_data_id`), keyed by the batch's `cloud:ip`
//! source, which the data link authenticated; the payload is only checked
//! (size, a JSON object with `time_ms`) and kept as sent, so fields a newer
//! agent adds pass through. Memory is bounded three ways: snapshots per
//! agent, agents, and bytes overall; what does not fit is counted and
//! dropped, never blocking the data path. Expiry uses this node's clock
//! (arrival time), ordering the agent's own `time_ms`. The agent side is
//! gse-agent's `snapshot.rs`; the API is `role/api/snapshot.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::identity::AgentKey;
use gse_core::seams::Record;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

mod shared;

pub use shared::SharedSnapshots;

/// Snapshots stored or dropped, by `outcome` (a fixed set: `stored`,
/// `too_large`, `bad_json`, `bad_source`, `duplicate`, `stale`,
/// `agents_full`, `memory_full`).
pub const SNAPSHOTS_TOTAL: &str = "gse_snapshot_records_total";
/// Agents with at least one snapshot in the cache.
pub const AGENTS_GAUGE: &str = "gse_snapshot_agents";
/// Payload bytes held by the cache.
pub const BYTES_GAUGE: &str = "gse_snapshot_bytes";

/// Shortest time between two warnings about dropped snapshots.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Shortest time between two sweeps a full cache makes for a newcomer.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// `[data.snapshot]`: how much of the agents' system snapshots is kept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCacheConfig {
    /// How long a snapshot is kept after it arrived.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Snapshots kept per agent (the oldest go first); 60 covers a minute
    /// at the fastest sensible interval (1 s).
    #[serde(default = "default_max_per_agent")]
    pub max_per_agent: usize,
    /// Agents kept; snapshots of further agents are dropped until idle ones
    /// expire.
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    /// Largest snapshot accepted, bytes (a real one is 2-8 KiB).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Payload bytes kept overall.
    #[serde(default = "default_max_total_bytes")]
    pub max_total_bytes: usize,
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

fn default_max_per_agent() -> usize {
    60
}

fn default_max_agents() -> usize {
    100_000
}

fn default_max_payload_bytes() -> usize {
    64 * 1024
}

fn default_max_total_bytes() -> usize {
    512 * 1024 * 1024
}

impl Default for SnapshotCacheConfig {
    fn default() -> Self {
        SnapshotCacheConfig {
            window: default_window(),
            max_per_agent: default_max_per_agent(),
            max_agents: default_max_agents(),
            max_payload_bytes: default_max_payload_bytes(),
            max_total_bytes: default_max_total_bytes(),
        }
    }
}

impl SnapshotCacheConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(3600) {
            problems.push(format!(
                "data.snapshot.window = {}: it must be between 1s and 1h",
                humantime::format_duration(self.window)
            ));
        }
        for (key, value, min) in [
            ("max_per_agent", self.max_per_agent, 1),
            ("max_agents", self.max_agents, 1),
            ("max_payload_bytes", self.max_payload_bytes, 1024),
        ] {
            if value < min {
                problems.push(format!(
                    "data.snapshot.{key} = {value}: it must be at least {min}"
                ));
            }
        }
        if self.max_total_bytes < self.max_payload_bytes {
            problems.push(format!(
                "data.snapshot.max_total_bytes = {}: it must be at least max_payload_bytes ({})",
                self.max_total_bytes, self.max_payload_bytes
            ));
        }
        problems
    }
}

/// Why a snapshot was not kept; its label is the metric's `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    TooLarge,
    BadJson,
    BadSource,
    /// The agent's snapshot with this `time_ms` is already kept (a batch
    /// delivered twice).
    Duplicate,
    /// Older, by the agent's clock, than its newest kept one minus the window.
    Stale,
    AgentsFull,
    MemoryFull,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::TooLarge => "too_large",
            Dropped::BadJson => "bad_json",
            Dropped::BadSource => "bad_source",
            Dropped::Duplicate => "duplicate",
            Dropped::Stale => "stale",
            Dropped::AgentsFull => "agents_full",
            Dropped::MemoryFull => "memory_full",
        }
    }
}

/// What the cache needs to read from a payload.
#[derive(Deserialize)]
struct Header {
    time_ms: u64,
}

/// One kept snapshot.
struct Entry {
    time_ms: u64,
    arrived: Instant,
    json: Arc<str>,
}

/// An agent's kept snapshots, in `time_ms` order.
#[derive(Default)]
struct AgentSnapshots {
    entries: Vec<Entry>,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<AgentKey, AgentSnapshots>,
    total_bytes: usize,
    last_warn: Option<Instant>,
    /// When a full cache last swept for room.
    last_full_sweep: Option<Instant>,
}

/// The last `window` of every agent's snapshots (see the module docs).
pub struct SnapshotCache {
    config: SnapshotCacheConfig,
    data_id: u32,
    inner: Mutex<Inner>,
    /// In a cluster: the store the nodes share snapshots in ([`shared`]).
    shared: std::sync::OnceLock<shared::Sharing>,
}

// === impl SnapshotCache ===

impl SnapshotCache {
    /// A cache for the records of `data_id`.
    pub fn new(data_id: u32, config: SnapshotCacheConfig) -> Self {
        SnapshotCache {
            config,
            data_id,
            inner: Mutex::new(Inner::default()),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Shares every kept snapshot with the other nodes through `store`, and
    /// reads there what this node did not get; the writer runs in `tasks`
    /// until `shutdown`.
    pub fn share(
        &self,
        store: Arc<dyn SharedSnapshots>,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: CancellationToken,
    ) {
        let (sharing, writer) = shared::Sharing::start(
            store,
            self.config.max_per_agent,
            self.config.window,
            shutdown,
        );
        if self.shared.set(sharing).is_ok() {
            tasks.spawn(writer);
        }
    }

    /// The agent's snapshots of the last window, as [`SnapshotCache::get`],
    /// from this node's cache or, in a cluster, from the shared store
    /// (another node's DataServer got them).
    pub async fn get_anywhere(&self, key: &AgentKey, latest_only: bool) -> Option<Vec<Arc<str>>> {
        if let Some(kept) = self.get(key, latest_only) {
            return Some(kept);
        }
        let sharing = self.shared.get()?;
        let since = gse_core::now_ms().saturating_sub(self.config.window.as_millis() as u64);
        let mut got: Vec<Arc<str>> = match sharing.store.get_snapshots(*key, since).await {
            Ok(got) => got.into_iter().map(Arc::from).collect(),
            Err(e) => {
                tracing::warn!(agent = %key, error = %e, "cannot read shared system snapshots");
                return None;
            }
        };
        if latest_only && got.len() > 1 {
            got.drain(..got.len() - 1);
        }
        (!got.is_empty()).then_some(got)
    }

    pub fn window(&self) -> Duration {
        self.config.window
    }

    /// Checks and keeps one snapshot of the agent `source` (`cloud:ip`).
    pub fn insert(&self, source: &str, payload: &[u8]) -> Result<(), Dropped> {
        let outcome = self.insert_at(source, payload, Instant::now());
        let label = match outcome {
            Ok(()) => "stored",
            Err(why) => why.label(),
        };
        ::metrics::counter!(SNAPSHOTS_TOTAL, "outcome" => label).increment(1);
        if let Err(why) = outcome {
            self.warn_dropped(source, why);
        }
        outcome
    }

    fn insert_at(&self, source: &str, payload: &[u8], now: Instant) -> Result<(), Dropped> {
        let key: AgentKey = source.parse().map_err(|_| Dropped::BadSource)?;
        let (time_ms, json) = self.check(payload)?;
        let shared_copy = self.shared.get().map(|s| (s, json.clone()));
        let mut inner = self.inner.lock();
        inner.admit(&key, now, &self.config)?;
        let entry = Entry {
            time_ms,
            arrived: now,
            json,
        };
        let placed = inner.place(key, entry, &self.config);
        inner.publish_gauges();
        drop(inner);
        if placed.is_ok()
            && let Some((sharing, json)) = shared_copy
        {
            sharing.offer(key, &json);
        }
        placed
    }

    /// Size, JSON object, `time_ms`; the payload as kept.
    fn check(&self, payload: &[u8]) -> Result<(u64, Arc<str>), Dropped> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(Dropped::TooLarge);
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| Dropped::BadJson)?
            .trim();
        // serde would also take `[time_ms]` for a struct; a snapshot is an object.
        if !text.starts_with('{') {
            return Err(Dropped::BadJson);
        }
        let header: Header = serde_json::from_str(text).map_err(|_| Dropped::BadJson)?;
        Ok((header.time_ms, Arc::from(text)))
    }

    /// The agent's snapshots of the last window, oldest first (only the
    /// newest with `latest_only`); `None` when it has none.
    pub fn get(&self, key: &AgentKey, latest_only: bool) -> Option<Vec<Arc<str>>> {
        self.get_at(key, latest_only, Instant::now())
    }

    fn get_at(&self, key: &AgentKey, latest_only: bool, now: Instant) -> Option<Vec<Arc<str>>> {
        let inner = self.inner.lock();
        let agent = inner.agents.get(key)?;
        let live = agent
            .entries
            .iter()
            .filter(|e| now.saturating_duration_since(e.arrived) < self.config.window);
        let mut out: Vec<Arc<str>> = live.map(|e| e.json.clone()).collect();
        if latest_only && out.len() > 1 {
            out.drain(..out.len() - 1);
        }
        (!out.is_empty()).then_some(out)
    }

    /// Agents with snapshots, and the bytes kept.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.agents.len(), inner.total_bytes)
    }

    /// Drops every expired snapshot and every agent left with none.
    pub fn sweep(&self) {
        let mut inner = self.inner.lock();
        inner.sweep(Instant::now(), self.config.window);
        inner.publish_gauges();
    }

    /// Sweeps a few times per window until `shutdown`, so agents that went
    /// away do not hold memory.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.config.window / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => self.sweep(),
            }
        }
    }

    fn warn_dropped(&self, source: &str, why: Dropped) {
        if why == Dropped::Duplicate {
            return; // at-least-once delivery: expected, and counted
        }
        let mut inner = self.inner.lock();
        let now = Instant::now();
        if inner
            .last_warn
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        inner.last_warn = Some(now);
        drop(inner);
        tracing::warn!(
            agent = %source,
            reason = why.label(),
            max_payload_bytes = self.config.max_payload_bytes,
            "dropped a system snapshot (more are counted in gse_snapshot_records_total, not logged)"
        );
    }
}

impl super::DataTap for SnapshotCache {
    fn data_id(&self) -> u32 {
        self.data_id
    }

    fn observe(&self, source: &str, record: &Record) {
        let _ = self.insert(source, &record.payload);
    }
}

// === impl Inner ===

impl Inner {
    /// Whether `key` may have snapshots: a known agent always, a new one
    /// while there is room (expired agents are swept for it, at most once
    /// a second so a crowd of newcomers does not scan the map each).
    fn admit(
        &mut self,
        key: &AgentKey,
        now: Instant,
        config: &SnapshotCacheConfig,
    ) -> Result<(), Dropped> {
        if self.agents.contains_key(key) || self.agents.len() < config.max_agents {
            return Ok(());
        }
        if self
            .last_full_sweep
            .is_none_or(|t| now.duration_since(t) >= FULL_SWEEP_EVERY)
        {
            self.last_full_sweep = Some(now);
            self.sweep(now, config.window);
        }
        if self.agents.len() < config.max_agents {
            Ok(())
        } else {
            Err(Dropped::AgentsFull)
        }
    }

    /// Puts `entry` in its `time_ms` place among the agent's live ones,
    /// making room under both caps with the agent's own oldest.
    fn place(
        &mut self,
        key: AgentKey,
        entry: Entry,
        config: &SnapshotCacheConfig,
    ) -> Result<(), Dropped> {
        let agent = self.agents.entry(key).or_default();
        self.total_bytes -= agent.expire(entry.arrived, config.window);
        let window_ms = config.window.as_millis() as u64;
        if let Some(newest) = agent.entries.last()
            && entry.time_ms.saturating_add(window_ms) < newest.time_ms
        {
            return Err(Dropped::Stale);
        }
        let at = agent.entries.partition_point(|e| e.time_ms < entry.time_ms);
        if agent
            .entries
            .get(at)
            .is_some_and(|e| e.time_ms == entry.time_ms)
        {
            return Err(Dropped::Duplicate);
        }
        if at == 0 && agent.entries.len() >= config.max_per_agent {
            return Err(Dropped::Stale); // older than all it would displace
        }
        let size = entry.json.len();
        while !agent.entries.is_empty()
            && (agent.entries.len() >= config.max_per_agent
                || self.total_bytes + size > config.max_total_bytes)
        {
            self.total_bytes -= agent.entries.remove(0).json.len();
        }
        if self.total_bytes + size > config.max_total_bytes {
            if agent.entries.is_empty() {
                self.agents.remove(&key);
            }
            return Err(Dropped::MemoryFull);
        }
        let at = agent.entries.partition_point(|e| e.time_ms < entry.time_ms);
        self.total_bytes += size;
        agent.entries.insert(at, entry);
        Ok(())
    }

    fn sweep(&mut self, now: Instant, window: Duration) {
        let mut freed = 0;
        self.agents.retain(|_, agent| {
            freed += agent.expire(now, window);
            !agent.entries.is_empty()
        });
        self.total_bytes -= freed;
    }

    fn publish_gauges(&self) {
        ::metrics::gauge!(AGENTS_GAUGE).set(self.agents.len() as f64);
        ::metrics::gauge!(BYTES_GAUGE).set(self.total_bytes as f64);
    }
}

// === impl AgentSnapshots ===

impl AgentSnapshots {
    /// Drops the entries that arrived a window ago or more; returns the bytes freed.
    fn expire(&mut self, now: Instant, window: Duration) -> usize {
        let mut freed = 0;
        self.entries.retain(|e| {
            let live = now.saturating_duration_since(e.arrived) < window;
            if !live {
                freed += e.json.len();
            }
            live
        });
        freed
    }
}

#[cfg(test)]
mod tests;

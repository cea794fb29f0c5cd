//! Data an agent dropped, as its heartbeats report it (cumulative counters
//! since the agent started: batches its full spool dropped, records lost
//! otherwise). Growth is counted in Prometheus
//! (`gse_data_agent_spool_dropped_batches_total`,
//! `gse_data_agent_lost_records_total`) and raises a `data_dropped` alarm,
//! at most once per agent per [`ALARM_EVERY`] while it keeps growing.

use std::collections::HashMap;
use std::time::Duration;

use gse_core::AgentKey;
use parking_lot::Mutex;

/// Least time between two `data_dropped` alarms about one agent.
pub const ALARM_EVERY: Duration = Duration::from_secs(60);

/// Most agents remembered; beyond it the table starts over (it only
/// decides how often to alarm, so forgetting costs at most an early alarm).
const MAX_AGENTS: usize = 100_000;

/// What the last heartbeat of an agent said, and when it last alarmed.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    batches: u64,
    records: u64,
    alarmed_ms: Option<u64>,
}

/// Growth of an agent's drop counters since its previous heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    pub batches: u64,
    pub records: u64,
    /// Whether to raise an alarm now.
    pub alarm: bool,
}

#[derive(Debug, Default)]
pub struct DataDrops {
    seen: Mutex<HashMap<AgentKey, Seen>>,
}

impl DataDrops {
    /// Takes one heartbeat's counters; `None` when nothing grew. Counters
    /// that went down mean the agent restarted: they count from zero.
    pub fn observe(
        &self,
        key: AgentKey,
        batches: u64,
        records: u64,
        now_ms: u64,
    ) -> Option<Growth> {
        if batches == 0 && records == 0 {
            return None;
        }
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_AGENTS && !seen.contains_key(&key) {
            seen.clear();
        }
        let s = seen.entry(key).or_default();
        let since = |now: u64, before: u64| if now >= before { now - before } else { now };
        let growth = Growth {
            batches: since(batches, s.batches),
            records: since(records, s.records),
            alarm: false,
        };
        s.batches = batches;
        s.records = records;
        if growth.batches == 0 && growth.records == 0 {
            return None;
        }
        let due = s
            .alarmed_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= ALARM_EVERY.as_millis() as u64);
        if due {
            s.alarmed_ms = Some(now_ms);
        }
        Some(Growth {
            alarm: due,
            ..growth
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_counted_and_alarmed_at_most_once_a_minute() {
        let drops = DataDrops::default();
        let key = AgentKey::new(0, "10.0.0.1".parse().unwrap());
        assert_eq!(drops.observe(key, 0, 0, 1_000), None);
        let first = drops.observe(key, 3, 0, 1_000).unwrap();
        assert_eq!((first.batches, first.records, first.alarm), (3, 0, true));
        // Unchanged: nothing to say.
        assert_eq!(drops.observe(key, 3, 0, 2_000), None);
        // Grows again within the minute: counted, not alarmed.
        let again = drops.observe(key, 5, 2, 30_000).unwrap();
        assert_eq!((again.batches, again.records, again.alarm), (2, 2, false));
        // A minute after the first alarm it alarms again.
        assert!(drops.observe(key, 6, 2, 61_000).unwrap().alarm);
        // The agent restarted: its counters start over.
        let restarted = drops.observe(key, 1, 0, 62_000).unwrap();
        assert_eq!((restarted.batches, restarted.records), (1, 0));
    }
}

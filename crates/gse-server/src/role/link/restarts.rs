//! Agents whose watchdog restarted their worker (issue 13), as their
//! heartbeats say: one `agent_restarted` alarm per restart (a restart is
//! known by when it happened), however many heartbeats repeat it.

use std::collections::HashMap;

use gse_core::AgentKey;
use parking_lot::Mutex;

/// Most agents remembered; beyond it the table starts over (forgetting
/// costs at most a repeated alarm for a restart still being reported).
const MAX_AGENTS: usize = 100_000;

#[derive(Debug, Default)]
pub struct Restarts {
    /// The restart (its time) last alarmed, per agent.
    alarmed: Mutex<HashMap<AgentKey, u64>>,
}

impl Restarts {
    /// Whether the restart at `at_ms` of `key` is news (to be alarmed).
    pub fn is_new(&self, key: AgentKey, at_ms: u64) -> bool {
        if at_ms == 0 {
            return false;
        }
        let mut alarmed = self.alarmed.lock();
        if alarmed.len() >= MAX_AGENTS && !alarmed.contains_key(&key) {
            alarmed.clear();
        }
        alarmed.insert(key, at_ms) != Some(at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_restart_is_news_once() {
        let r = Restarts::default();
        let k = AgentKey::new(0, "10.0.0.1".parse().unwrap());
        assert!(!r.is_new(k, 0), "not restarted");
        assert!(r.is_new(k, 5));
        assert!(!r.is_new(k, 5), "the same restart again");
        assert!(r.is_new(k, 9), "a later one");
    }
}

//! `[proc]` config section: how operations are queued and how long their
//! results are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the proc role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcConfig {
    /// Operations wait in the queue up to this long, so a burst of calls
    /// is dispatched together; while queued, a task's result answers
    /// envelope code 1000115.
    #[serde(default = "default_dispatch_interval", with = "humantime_serde")]
    pub dispatch_interval: Duration,
    /// How long a task's results are kept after it was created.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Most tasks kept; the oldest go first beyond it.
    #[serde(default = "default_max_tasks")]
    pub max_tasks: usize,
    /// Time an agent gets beyond an op's own timeouts (op_timeout plus the
    /// start or stop check) before the op fails with 65535.
    #[serde(default = "default_answer_grace", with = "humantime_serde")]
    pub answer_grace: Duration,
}

fn default_dispatch_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_retention() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_tasks() -> usize {
    10_000
}

fn default_answer_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for ProcConfig {
    fn default() -> Self {
        ProcConfig {
            dispatch_interval: default_dispatch_interval(),
            retention: default_retention(),
            max_tasks: default_max_tasks(),
            answer_grace: default_answer_grace(),
        }
    }
}

impl ProcConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.dispatch_interval.is_zero() || self.dispatch_interval > Duration::from_secs(60) {
            problems.push(format!(
                "proc.dispatch_interval = {:?}: it must be between 1ms and 60s",
                self.dispatch_interval
            ));
        }
        if self.retention < Duration::from_secs(60) {
            problems.push(format!(
                "proc.retention = {:?}: it must be at least 60s (nodeman polls for up to 360s)",
                self.retention
            ));
        }
        if self.max_tasks == 0 {
            problems.push("proc.max_tasks = 0: it must be at least 1".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_named() {
        assert!(ProcConfig::default().problems().is_empty());
        let bad = ProcConfig {
            dispatch_interval: Duration::ZERO,
            retention: Duration::from_secs(1),
            max_tasks: 0,
            ..ProcConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("proc.dispatch_interval"));
    }
}

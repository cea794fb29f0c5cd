//! `[watchdog]`: the agent process supervising its worker (issue 13).
//!
//! ```toml
//! [watchdog]
//! enabled = true            # false: `gse-agent run` is the worker itself
//! memory_max_mb = 1024      # the worker's resident memory; 0 = no limit
//! memory_checks = 3         # checks in a row over it before a restart
//! cpu_max_percent = 0       # the worker's cpu, % of one core, over cpu_window; 0 = no limit
//! cpu_window = "60s"
//! check_interval = "2s"
//! backoff_initial = "1s"    # before restarting a worker that crashed; doubles
//! backoff_max = "60s"
//! stable_after = "60s"      # a worker up this long resets the back-off
//! stop_grace = "15s"        # SIGTERM, then SIGKILL after this
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[watchdog]` settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// `gse-agent run` supervises a worker process (restarted on crash and
    /// over budget); false: it is the agent itself (`run --no-watchdog`
    /// does the same).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The worker's resident memory, MiB; over it for `memory_checks`
    /// checks in a row, it is restarted. 0 = no limit.
    #[serde(default = "default_memory_max_mb")]
    pub memory_max_mb: u64,
    #[serde(default = "default_memory_checks")]
    pub memory_checks: u32,
    /// The worker's cpu use, percent of one core, averaged over
    /// `cpu_window`; over it, the worker is restarted. 0 = no limit. The
    /// tasks and plugins it runs are not counted.
    #[serde(default)]
    pub cpu_max_percent: u32,
    #[serde(default = "default_cpu_window", with = "humantime_serde")]
    pub cpu_window: Duration,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(default = "default_stable_after", with = "humantime_serde")]
    pub stable_after: Duration,
    /// How long a worker asked to stop (SIGTERM) gets before SIGKILL.
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
}

fn default_true() -> bool {
    true
}
fn default_memory_max_mb() -> u64 {
    1024
}
fn default_memory_checks() -> u32 {
    3
}
fn default_cpu_window() -> Duration {
    Duration::from_secs(60)
}
fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_stable_after() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(15)
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            enabled: true,
            memory_max_mb: default_memory_max_mb(),
            memory_checks: default_memory_checks(),
            cpu_max_percent: 0,
            cpu_window: default_cpu_window(),
            check_interval: default_check_interval(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            stable_after: default_stable_after(),
            stop_grace: default_stop_grace(),
        }
    }
}

impl WatchdogConfig {
    /// Pure checks; each problem names its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.check_interval < Duration::from_millis(100) {
            problems.push(format!(
                "watchdog.check_interval = {:?}: must be at least 100ms",
                self.check_interval
            ));
        }
        if self.memory_checks == 0 {
            problems.push("watchdog.memory_checks = 0: must be at least 1".into());
        }
        if self.cpu_max_percent > 0 && self.cpu_window < self.check_interval * 2 {
            problems.push(format!(
                "watchdog.cpu_window = {:?}: must be at least two check_intervals",
                self.cpu_window
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            problems
                .push("watchdog.backoff_initial must be > 0 and <= watchdog.backoff_max".into());
        }
    }
}

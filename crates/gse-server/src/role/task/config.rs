//! `[task]` config section: output bounds, default timeout, how long task
//! records are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the task role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Output kept per (agent, atomic task), bytes; agents cut their output
    /// there with a truncation marker, and the server keeps no more.
    #[serde(default = "default_output_limit")]
    pub output_limit: u64,
    /// Timeout of an atomic task whose `timeout_seconds` is 0 or missing.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub default_timeout: Duration,
    /// How long task records and logs are kept in the store.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

/// Longest atomic-task timeout a caller may ask for (one day).
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;

fn default_output_limit() -> u64 {
    gse_core::task::DEFAULT_OUTPUT_LIMIT
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            output_limit: default_output_limit(),
            default_timeout: default_timeout(),
            retention: default_retention(),
        }
    }
}

impl TaskConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1024..=64 * 1024 * 1024).contains(&self.output_limit) {
            problems.push(format!(
                "task.output_limit = {}: it must be between 1024 and 67108864 bytes",
                self.output_limit
            ));
        }
        let timeout = self.default_timeout.as_secs();
        if timeout == 0 || timeout > u64::from(MAX_TIMEOUT_SECONDS) {
            problems.push(format!(
                "task.default_timeout = {}: it must be between 1s and 1day",
                humantime::format_duration(self.default_timeout)
            ));
        }
        if self.retention < Duration::from_secs(3600) {
            problems.push(format!(
                "task.retention = {}: keep task records at least 1h",
                humantime::format_duration(self.retention)
            ));
        }
        problems
    }

    /// `default_timeout` in whole seconds, as agents take it.
    pub fn default_timeout_seconds(&self) -> u32 {
        self.default_timeout
            .as_secs()
            .clamp(1, u64::from(MAX_TIMEOUT_SECONDS)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults_round_trip_and_bad_values_are_named() {
        let text = "output_limit = 5242880\ndefault_timeout = \"10m\"\nretention = \"7days\"\n";
        let parsed: TaskConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed, TaskConfig::default());
        assert_eq!(toml::to_string(&TaskConfig::default()).unwrap(), text);
        assert!(parsed.problems().is_empty());

        let bad = TaskConfig {
            output_limit: 10,
            default_timeout: Duration::ZERO,
            retention: Duration::from_secs(60),
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("task.output_limit = 10"));
    }
}

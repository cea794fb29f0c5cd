//! `[file]` config section: how transfers are run (direct limit, P2P
//! attempts, peer sets), their timeouts and retention, and which zone
//! pass-throughs (F9) the operator allows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest transfer timeout an operator may configure (one week).
const MAX_CONFIGURABLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `direct_limit_bytes`: a whole direct file must fit one frame
/// with room to spare.
const MAX_DIRECT_LIMIT: u64 = 4 * 1024 * 1024;

/// Settings of the file role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Files of at most this many bytes are fetched direct through the
    /// server, whole (F2); larger ones peer to peer (F1).
    #[serde(default = "default_direct_limit_bytes")]
    pub direct_limit_bytes: u64,
    /// Failed peer attempts for one piece before an agent fetches it direct
    /// through the server (F3).
    #[serde(default = "default_p2p_attempts")]
    pub p2p_attempts: u32,
    /// Most peers one agent is given for one task (C4).
    #[serde(default = "default_peer_set_limit")]
    pub peer_set_limit: u32,
    /// Timeout of a transfer whose `timeout_seconds` is 0 or absent.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Longest `timeout_seconds` a caller may ask for.
    #[serde(default = "default_max_timeout", with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Most `tasks` (source file specs) in one transfer.
    #[serde(default = "default_max_tasks_per_transfer")]
    pub max_tasks_per_transfer: usize,
    /// How long finished transfer records stay in the store.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Zone pairs whose agents may exchange pieces directly (F9), when a
    /// transfer asks for it in `pass_through`.
    #[serde(default)]
    pub pass_through: Vec<PassThroughRule>,
}

/// `[[file.pass_through]]`: targets in `to_zone` may fetch from the agents
/// of `from_zone`, for the apps listed (every app when `apps` is empty).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PassThroughRule {
    pub from_zone: String,
    pub to_zone: String,
    #[serde(default)]
    pub apps: Vec<String>,
}

fn default_direct_limit_bytes() -> u64 {
    10 * 1024
}

fn default_p2p_attempts() -> u32 {
    3
}

fn default_peer_set_limit() -> u32 {
    32
}

fn default_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_tasks_per_transfer() -> usize {
    1000
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            direct_limit_bytes: default_direct_limit_bytes(),
            p2p_attempts: default_p2p_attempts(),
            peer_set_limit: default_peer_set_limit(),
            default_timeout: default_timeout(),
            max_timeout: default_max_timeout(),
            max_tasks_per_transfer: default_max_tasks_per_transfer(),
            retention: default_retention(),
            pass_through: Vec::new(),
        }
    }
}

impl FileConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        check(
            self.direct_limit_bytes <= MAX_DIRECT_LIMIT,
            format!(
                "file.direct_limit_bytes = {}: it must be at most {MAX_DIRECT_LIMIT} (4 MiB)",
                self.direct_limit_bytes
            ),
        );
        check(
            (1..=100).contains(&self.p2p_attempts),
            format!(
                "file.p2p_attempts = {}: it must be between 1 and 100",
                self.p2p_attempts
            ),
        );
        check(
            (1..=1000).contains(&self.peer_set_limit),
            format!(
                "file.peer_set_limit = {}: it must be between 1 and 1000",
                self.peer_set_limit
            ),
        );
        check(
            self.max_timeout >= Duration::from_secs(1)
                && self.max_timeout <= MAX_CONFIGURABLE_TIMEOUT,
            format!(
                "file.max_timeout = {}: it must be between 1s and 7days",
                humantime::format_duration(self.max_timeout)
            ),
        );
        check(
            self.default_timeout >= Duration::from_secs(1)
                && self.default_timeout <= self.max_timeout,
            format!(
                "file.default_timeout = {}: it must be between 1s and file.max_timeout ({})",
                humantime::format_duration(self.default_timeout),
                humantime::format_duration(self.max_timeout)
            ),
        );
        check(
            (1..=100_000).contains(&self.max_tasks_per_transfer),
            format!(
                "file.max_tasks_per_transfer = {}: it must be between 1 and 100000",
                self.max_tasks_per_transfer
            ),
        );
        check(
            self.retention >= Duration::from_secs(3600),
            format!(
                "file.retention = {}: keep transfer records at least 1h",
                humantime::format_duration(self.retention)
            ),
        );
        for (i, rule) in self.pass_through.iter().enumerate() {
            check(
                rule.from_zone != rule.to_zone,
                format!(
                    "file.pass_through[{i}]: from_zone and to_zone are both {:?}; agents of one zone always peer with each other, so remove the entry",
                    rule.from_zone
                ),
            );
        }
        problems
    }

    /// Whether `app` may let targets in `to` fetch from agents in `from`.
    pub fn allows_pass_through(&self, from: &str, to: &str, app: &str) -> bool {
        self.pass_through.iter().any(|r| {
            r.from_zone == from
                && r.to_zone == to
                && (r.apps.is_empty() || r.apps.iter().any(|a| a == app))
        })
    }

    /// The timeout of a transfer that asks for `seconds` (0 = the default),
    /// within `max_timeout`.
    pub fn timeout_for(&self, seconds: u64) -> Duration {
        match seconds {
            0 => self.default_timeout,
            s => Duration::from_secs(s).min(self.max_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults_round_trip_and_bad_values_are_named() {
        let text = "direct_limit_bytes = 10240\np2p_attempts = 3\npeer_set_limit = 32\n\
                    default_timeout = \"1h\"\nmax_timeout = \"1day\"\n\
                    max_tasks_per_transfer = 1000\nretention = \"7days\"\npass_through = []\n";
        let parsed: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed, FileConfig::default());
        assert_eq!(toml::to_string(&FileConfig::default()).unwrap(), text);
        assert!(parsed.problems().is_empty());

        let bad = FileConfig {
            direct_limit_bytes: 1 << 30,
            p2p_attempts: 0,
            peer_set_limit: 0,
            default_timeout: Duration::from_secs(48 * 3600),
            max_timeout: Duration::from_secs(24 * 3600),
            max_tasks_per_transfer: 0,
            retention: Duration::from_secs(60),
            pass_through: vec![PassThroughRule {
                from_zone: "a".into(),
                to_zone: "a".into(),
                apps: vec![],
            }],
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 7, "{problems:?}");
        assert!(problems[0].starts_with("file.direct_limit_bytes = 1073741824"));
        assert!(problems[6].starts_with("file.pass_through[0]"));
    }

    #[test]
    fn pass_through_is_per_direction_and_per_app() {
        let cfg: FileConfig = toml::from_str(
            "[[pass_through]]\nfrom_zone = \"a\"\nto_zone = \"b\"\n\
             [[pass_through]]\nfrom_zone = \"a\"\nto_zone = \"c\"\napps = [\"bk_job\"]\n",
        )
        .unwrap();
        assert!(cfg.allows_pass_through("a", "b", "anyone"));
        assert!(!cfg.allows_pass_through("b", "a", "anyone"));
        assert!(cfg.allows_pass_through("a", "c", "bk_job"));
        assert!(!cfg.allows_pass_through("a", "c", "other"));
    }

    #[test]
    fn timeouts_default_and_cap() {
        let cfg = FileConfig::default();
        assert_eq!(cfg.timeout_for(0), Duration::from_secs(3600));
        assert_eq!(cfg.timeout_for(5), Duration::from_secs(5));
        assert_eq!(cfg.timeout_for(u64::MAX), Duration::from_secs(86400));
    }
}

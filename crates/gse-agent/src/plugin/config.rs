//! `[plugin]`: the plugin supervisor (D2, C8) and the plugin-message socket
//! (COMPAT §1.3).
//!
//! ```toml
//! [plugin]
//! message_ipc = ""          # "" = <data_dir>/ipc.state.message
//! check_interval = "1s"     # how often hosted plugins are checked
//! limit_samples = 5         # samples over a cpu/mem limit before a kill
//! report_interval = "60s"   # full status report upstream
//! max_message_bytes = 1048576    # largest plugin-message frame
//! max_message_connections = 256  # plugin-message connections at once
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// File name of the plugin-message socket under `agent.data_dir`.
pub const DEFAULT_MESSAGE_IPC: &str = "ipc.state.message";
/// Largest plugin-message frame taken by default (header included).
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1024 * 1024;
/// Plugin-message connections served at once by default.
pub const DEFAULT_MAX_MESSAGE_CONNECTIONS: usize = 256;

/// `[plugin]` settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unix socket of the plugin-message protocol; `""` =
    /// `<data_dir>/ipc.state.message`. The SDK's examples use
    /// `/var/run/gse2/agent/ipc.state.message`; point this there (or link
    /// it) for plugins built with those defaults.
    #[serde(default)]
    pub message_ipc: PathBuf,
    /// How often each hosted plugin's liveness and resource use are
    /// checked.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// Checks in a row over `resource.cpu` or `resource.mem` before a
    /// hosted plugin is killed (and then restarted like any dead one).
    #[serde(default = "default_limit_samples")]
    pub limit_samples: u32,
    /// How often the full plugin list is reported upstream (changes are
    /// reported at once).
    #[serde(default = "default_report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
    /// Largest frame accepted on the plugin-message socket, header
    /// included; a larger one closes that connection.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// Connections the plugin-message socket serves at once (it is open to
    /// every local user); further ones wait until one closes.
    #[serde(default = "default_max_message_connections")]
    pub max_message_connections: usize,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            message_ipc: PathBuf::new(),
            check_interval: default_check_interval(),
            limit_samples: default_limit_samples(),
            report_interval: default_report_interval(),
            max_message_bytes: default_max_message_bytes(),
            max_message_connections: default_max_message_connections(),
        }
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_limit_samples() -> u32 {
    5
}

fn default_report_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_max_message_bytes() -> u32 {
    DEFAULT_MAX_MESSAGE_BYTES
}

fn default_max_message_connections() -> usize {
    DEFAULT_MAX_MESSAGE_CONNECTIONS
}

// === impl PluginConfig ===

impl PluginConfig {
    /// Pure checks; each problem names its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.check_interval < Duration::from_millis(100) {
            problems.push(format!(
                "plugin.check_interval = {:?}: must be at least 100ms",
                self.check_interval
            ));
        }
        if self.limit_samples == 0 {
            problems.push("plugin.limit_samples = 0: must be at least 1".into());
        }
        if self.report_interval < Duration::from_secs(1) {
            problems.push(format!(
                "plugin.report_interval = {:?}: must be at least 1s",
                self.report_interval
            ));
        }
        if self.max_message_bytes < 1024 {
            problems.push(format!(
                "plugin.max_message_bytes = {}: must be at least 1024",
                self.max_message_bytes
            ));
        }
        if self.max_message_connections == 0 {
            problems.push("plugin.max_message_connections = 0: must be at least 1".into());
        }
    }

    /// `message_ipc`, or its default under `data_dir`.
    pub fn message_ipc(&self, data_dir: &Path) -> PathBuf {
        if self.message_ipc.as_os_str().is_empty() {
            data_dir.join(DEFAULT_MESSAGE_IPC)
        } else {
            self.message_ipc.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_the_socket_lives_in_data_dir() {
        let cfg = PluginConfig::default();
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cfg.message_ipc(Path::new("/d")),
            PathBuf::from("/d/ipc.state.message")
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let cfg = PluginConfig {
            check_interval: Duration::from_millis(1),
            limit_samples: 0,
            report_interval: Duration::ZERO,
            max_message_bytes: 1,
            max_message_connections: 0,
            ..PluginConfig::default()
        };
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}

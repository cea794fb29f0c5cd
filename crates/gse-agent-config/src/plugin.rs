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
//! max_message_connections_per_uid = 64  # ... of one non-root user
//! message_ipc_links = ["/var/run/gse2/agent/ipc.state.message"]
//! message_users = []        # besides root and the agent's own user
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
/// Plugin-message connections one non-root user may hold by default.
pub const DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID: usize = 64;
/// Where SDK-built plugins look for the plugin-message socket (the SDK
/// examples, COMPAT §1.1), linked to it by default.
pub const PLUGIN_PATHS: [&str; 1] = ["/var/run/gse2/agent/ipc.state.message"];
/// Largest `max_message_bytes`: the SDK's own 10 MiB message limit.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 10 << 20;

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
    /// Connections one local user (uid) may hold on the plugin-message
    /// socket; beyond it that user's new ones are closed at once. Root is
    /// not limited. Below `max_message_connections`.
    #[serde(default = "default_max_message_connections_per_uid")]
    pub max_message_connections_per_uid: usize,
    /// Paths made as symlinks to the plugin-message socket at start and
    /// removed at stop (like `data.ipc_links`); default [`PLUGIN_PATHS`].
    #[serde(default = "default_message_ipc_links")]
    pub message_ipc_links: Vec<PathBuf>,
    /// Local users (names, or numeric uids) whose connections may speak for
    /// a plugin on the plugin-message socket besides root and the agent's
    /// own user: receive the server's messages (0x9008) and send messages
    /// to the server (0x900a). Anyone may connect and get keepalive
    /// answers; a message from another user is dropped, and none is
    /// written to it, so a local user cannot pose as a plugin.
    #[serde(default)]
    pub message_users: Vec<String>,
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
            max_message_connections_per_uid: default_max_message_connections_per_uid(),
            message_ipc_links: default_message_ipc_links(),
            message_users: Vec::new(),
        }
    }
}

fn default_max_message_connections_per_uid() -> usize {
    DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID
}

fn default_message_ipc_links() -> Vec<PathBuf> {
    PLUGIN_PATHS.iter().map(PathBuf::from).collect()
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
        if !(1024..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            problems.push(format!(
                "plugin.max_message_bytes = {}: must be 1024..={MAX_MESSAGE_BYTES_LIMIT}",
                self.max_message_bytes
            ));
        }
        if self.max_message_connections < 2 {
            problems.push(format!(
                "plugin.max_message_connections = {}: must be at least 2",
                self.max_message_connections
            ));
        }
        if self.max_message_connections_per_uid == 0
            || self.max_message_connections_per_uid >= self.max_message_connections
        {
            problems.push(format!(
                "plugin.max_message_connections_per_uid = {}: must be 1..{} (below \
                 plugin.max_message_connections)",
                self.max_message_connections_per_uid, self.max_message_connections
            ));
        }
        for link in self.message_ipc_links.iter().filter(|l| !l.is_absolute()) {
            problems.push(format!(
                "plugin.message_ipc_links: {} is not an absolute path",
                link.display()
            ));
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
        // max_message_connections 0 also puts the per-uid cap above it.
        assert_eq!(problems.len(), 6, "{problems:?}");
    }
}

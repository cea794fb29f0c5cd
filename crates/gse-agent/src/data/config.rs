//! `[data]`: the local send socket (D1), batching, the spool and the
//! DataServer uplink (D4, D5). Re-exported as `crate::config::DataConfig`.
//!
//! ```toml
//! [data]
//! ipc = ""                        # "" = <agent.data_dir>/ipc.state.report
//! ipc_links = ["/var/run/ipc.state.report"]
//! spool_max_mb = 1024
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default data id of the system snapshot (D3).
pub const DEFAULT_SNAPSHOT_DATA_ID: u32 = 1_100_001;
/// File name of the socket under `agent.data_dir` (GSE 2.0's name).
pub const IPC_FILE_NAME: &str = "ipc.state.report";

/// `[data]` section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Unix socket collectors send data to (COMPAT §1.1); `""` =
    /// `<agent.data_dir>/ipc.state.report` (the GSE 2.0 layout).
    #[serde(default)]
    pub ipc: PathBuf,
    /// More paths made as symlinks to the socket at start, for collectors
    /// with a fixed endpoint: e.g. `/var/run/ipc.state.report` (what
    /// bkmonitorbeat's and bkunifylogbeat's shipped configs name) or
    /// `/usr/local/gse/agent/data/ipc.state.report`. An existing symlink is
    /// replaced; any other existing file is left alone (logged).
    #[serde(default)]
    pub ipc_links: Vec<PathBuf>,
    /// Where batches wait on disk while the DataServer is unreachable;
    /// `""` = `<agent.data_dir>/data-spool`.
    #[serde(default)]
    pub spool_dir: PathBuf,
    /// Spool size limit in MB; when full the oldest data is dropped (and
    /// counted, logged at ERROR).
    #[serde(default = "default_spool_max_mb")]
    pub spool_max_mb: u64,
    /// Batches held in memory (waiting or in flight) in MB. When it is
    /// full and the DataServer keeps acknowledging, the local socket waits
    /// (backpressure); when the link is down or stalled, new batches go to
    /// the spool.
    #[serde(default = "default_memory_max_mb")]
    pub memory_max_mb: u64,
    /// A data id's batch is cut at this size, in KB.
    #[serde(default = "default_batch_max_kb")]
    pub batch_max_kb: u64,
    /// ... or when its first record is this old, in ms.
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// Fallback DataServers (`host:port`), used only while the node has
    /// assigned none (RegisterAck / DataAssign); tried in turn.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Batches sent and not yet acknowledged, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// An ack slower than this counts as a stall: the link is dropped and
    /// its batches are sent again (after the spool) on a new one.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How often the system snapshot (D3) is sent; `0s` = never.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Data id the snapshot is sent on.
    #[serde(default = "default_snapshot_data_id")]
    pub snapshot_data_id: u32,
}

fn default_spool_max_mb() -> u64 {
    1024
}
fn default_memory_max_mb() -> u64 {
    64
}
fn default_batch_max_kb() -> u64 {
    256
}
fn default_batch_linger_ms() -> u64 {
    20
}
fn default_max_in_flight() -> usize {
    32
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_snapshot_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_snapshot_data_id() -> u32 {
    DEFAULT_SNAPSHOT_DATA_ID
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            ipc: PathBuf::new(),
            ipc_links: Vec::new(),
            spool_dir: PathBuf::new(),
            spool_max_mb: default_spool_max_mb(),
            memory_max_mb: default_memory_max_mb(),
            batch_max_kb: default_batch_max_kb(),
            batch_linger_ms: default_batch_linger_ms(),
            servers: Vec::new(),
            max_in_flight: default_max_in_flight(),
            ack_timeout: default_ack_timeout(),
            snapshot_interval: default_snapshot_interval(),
            snapshot_data_id: default_snapshot_data_id(),
        }
    }
}

// === impl DataConfig ===

impl DataConfig {
    /// The socket path, resolved against `data_dir`.
    pub fn ipc_path(&self, data_dir: &Path) -> PathBuf {
        if self.ipc.as_os_str().is_empty() {
            data_dir.join(IPC_FILE_NAME)
        } else {
            self.ipc.clone()
        }
    }

    /// The spool directory, resolved against `data_dir`.
    pub fn spool_path(&self, data_dir: &Path) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() {
            data_dir.join("data-spool")
        } else {
            self.spool_dir.clone()
        }
    }

    pub fn batch_max_bytes(&self) -> usize {
        (self.batch_max_kb as usize).saturating_mul(1024)
    }

    pub fn memory_max_bytes(&self) -> u64 {
        self.memory_max_mb.saturating_mul(1 << 20)
    }

    pub fn spool_max_bytes(&self) -> u64 {
        self.spool_max_mb.saturating_mul(1 << 20)
    }

    /// Pure checks; each problem names its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.spool_max_mb == 0 {
            problems.push("data.spool_max_mb = 0: must be at least 1".into());
        }
        if self.memory_max_mb == 0 {
            problems.push("data.memory_max_mb = 0: must be at least 1".into());
        }
        if self.batch_max_kb == 0 || self.batch_max_kb > 16 * 1024 {
            problems.push(format!(
                "data.batch_max_kb = {}: must be 1..=16384",
                self.batch_max_kb
            ));
        }
        if self.batch_linger_ms == 0 || self.batch_linger_ms > 60_000 {
            problems.push(format!(
                "data.batch_linger_ms = {}: must be 1..=60000",
                self.batch_linger_ms
            ));
        }
        if self.max_in_flight == 0 {
            problems.push("data.max_in_flight = 0: must be at least 1".into());
        }
        if self.ack_timeout < Duration::from_millis(100) {
            problems.push("data.ack_timeout must be at least 100ms".into());
        }
        for s in &self.servers {
            if s.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!("data.servers: {s:?} is not host:port"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_default_under_the_data_dir() {
        let cfg = DataConfig::default();
        let dir = Path::new("/var/lib/gse-agent");
        assert_eq!(
            cfg.ipc_path(dir),
            Path::new("/var/lib/gse-agent/ipc.state.report")
        );
        assert_eq!(
            cfg.spool_path(dir),
            Path::new("/var/lib/gse-agent/data-spool")
        );
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn documented_example_parses_and_bad_values_are_named() {
        let cfg: DataConfig = toml::from_str(
            "ipc = \"\"\nipc_links = [\"/var/run/ipc.state.report\"]\nspool_max_mb = 1024\n",
        )
        .unwrap();
        assert_eq!(cfg.ipc_links.len(), 1);
        let bad = DataConfig {
            batch_max_kb: 0,
            servers: vec!["nohost".into()],
            ..DataConfig::default()
        };
        let mut problems = Vec::new();
        bad.validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}

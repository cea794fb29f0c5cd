//! `[data]`: the local send socket (D1), batching, the spool and the
//! DataServer uplink (D4, D5). Re-exported as `gse_agent_config::DataConfig`.
//!
//! ```toml
//! [data]
//! ipc = ""                        # "" = <agent.data_dir>/ipc.state.report
//! ipc_links = ["/var/run/ipc.state.report"]
//! socket_mode = "0660"            # octal; "0666" (the default) = every local user
//! socket_group = "gse"            # "" = the agent's own group
//! max_connections_per_uid = 32
//! root_reserved_connections = 64  # default: a quarter of max_connections
//! spool_max_mb = 1024
//! ```
//!
//! The socket is open to local users, who are not trusted (DESIGN "Trust"):
//! `max_connections` bounds what all of them hold, `max_connections_per_uid`
//! what one non-root user holds, `root_reserved_connections` what all
//! non-root users leave to root, and `idle_timeout` how long a connection
//! may sit without completing a frame. When only the collectors of one
//! group should write, `socket_mode = "0660"` with `socket_group` keeps
//! every other local user out (the default "0666" is for compatibility).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default data id of the system snapshot (D3).
pub const DEFAULT_SNAPSHOT_DATA_ID: u32 = 1_100_001;
/// File name of the socket under `agent.data_dir` (GSE 2.0's name).
pub const IPC_FILE_NAME: &str = "ipc.state.report";
/// The data-socket paths real collectors dial (COMPAT §1.1), linked to the
/// socket by default: libgse's compiled-in path for op data (whatever the
/// beat's configured endpoint), the GSE 2.0 layout, the SDK examples' path,
/// and the endpoint written into shipped bkmonitorbeat/bkunifylogbeat
/// configs.
pub const COLLECTOR_PATHS: [&str; 4] = [
    "/usr/local/gse/gseagent/ipc.state.report",
    "/usr/local/gse/agent/data/ipc.state.report",
    "/var/run/gse2/agent/ipc.state.report",
    "/var/run/ipc.state.report",
];
/// Default socket file mode: collectors run as many users.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
/// Default cap on the socket's open connections (all users together).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default cap on one non-root user's open connections.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
/// Connections kept for root by default: `max_connections` divided by this.
pub const ROOT_RESERVE_DIVISOR: usize = 4;
/// Default idle timeout: four of libgse's 31 s agent-info periods.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// `[data]` section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Unix socket collectors send data to (COMPAT §1.1); `""` =
    /// `<agent.data_dir>/ipc.state.report` (the GSE 2.0 layout).
    #[serde(default)]
    pub ipc: PathBuf,
    /// More paths made as symlinks to the socket at start and removed at
    /// stop, for collectors with a fixed endpoint; default
    /// [`COLLECTOR_PATHS`]. Missing parent directories are created (root's,
    /// 0755) without following a symlink a local user could have planted;
    /// an existing file, or a symlink to anything but this socket, is left
    /// alone (logged): it belongs to someone else. Several agents on one
    /// host (quickstart) must each set their own list, or `[]`.
    #[serde(default = "default_ipc_links")]
    pub ipc_links: Vec<PathBuf>,
    /// Permission bits of the socket file, octal (`"0666"`: every local
    /// user may send; `"0660"` with `socket_group`: root and that group).
    #[serde(default = "default_socket_mode", with = "octal_mode")]
    pub socket_mode: u32,
    /// Group given to the socket file; `""` = the agent's own.
    #[serde(default)]
    pub socket_group: String,
    /// Connections served at once, all users together; further ones wait
    /// in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one local user (uid) may hold at once; beyond it that
    /// user's new connections are closed at once (logged at most every
    /// 10 s). Root is not limited. Below `max_connections`, so one user
    /// can never take every slot.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// Connections only root may take: non-root users together hold at
    /// most `max_connections` minus this, so root's collectors always get
    /// in; beyond it, non-root users' new connections are closed at once
    /// (logged). Unset = a quarter of `max_connections`; 0 = none kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_reserved_connections: Option<usize>,
    /// A connection that completes no frame for this long is closed
    /// (libgse asks for the agent info every 31 s on its connection).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
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

fn default_ipc_links() -> Vec<PathBuf> {
    COLLECTOR_PATHS.iter().map(PathBuf::from).collect()
}
fn default_socket_mode() -> u32 {
    DEFAULT_SOCKET_MODE
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_connections_per_uid() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_UID
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
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
            ipc_links: default_ipc_links(),
            socket_mode: default_socket_mode(),
            socket_group: String::new(),
            max_connections: default_max_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            root_reserved_connections: None,
            idle_timeout: default_idle_timeout(),
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

    /// Connections kept for root (see `root_reserved_connections`).
    pub fn root_reserve(&self) -> usize {
        self.root_reserved_connections
            .unwrap_or(self.max_connections / ROOT_RESERVE_DIVISOR)
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
        self.validate_socket(problems);
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

    fn validate_socket(&self, problems: &mut Vec<String>) {
        if self.socket_mode > 0o777 {
            problems.push(format!(
                "data.socket_mode = \"{:04o}\": must be permission bits, at most \"0777\"",
                self.socket_mode
            ));
        }
        if self.max_connections < 2 {
            problems.push(format!(
                "data.max_connections = {}: must be at least 2",
                self.max_connections
            ));
        }
        if self.max_connections_per_uid == 0 || self.max_connections_per_uid >= self.max_connections
        {
            problems.push(format!(
                "data.max_connections_per_uid = {}: must be 1..{} (below data.max_connections, \
                 so one local user cannot take every connection)",
                self.max_connections_per_uid, self.max_connections
            ));
        }
        if let Some(reserve) = self.root_reserved_connections
            && reserve >= self.max_connections
        {
            problems.push(format!(
                "data.root_reserved_connections = {reserve}: must be below data.max_connections \
                 = {} (local users need at least one connection)",
                self.max_connections
            ));
        }
        if self.idle_timeout < Duration::from_secs(1) {
            problems.push(format!(
                "data.idle_timeout = {:?}: must be at least 1s",
                self.idle_timeout
            ));
        }
        for link in &self.ipc_links {
            if !link.is_absolute() {
                problems.push(format!(
                    "data.ipc_links: {} is not an absolute path",
                    link.display()
                ));
            }
        }
    }
}

/// `socket_mode` as an octal string (`"0660"`); an integer (TOML's `0o660`)
/// is read too.
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Mode {
            Int(u32),
            Text(String),
        }
        match Mode::deserialize(d)? {
            Mode::Int(m) => Ok(m),
            Mode::Text(t) => {
                let digits = t.strip_prefix("0o").unwrap_or(&t);
                u32::from_str_radix(digits, 8).map_err(|_| {
                    D::Error::custom(format!("{t:?} is not an octal mode such as \"0660\""))
                })
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

    #[test]
    fn socket_keys_parse_octal_and_bad_ones_are_named() {
        for text in ["socket_mode = \"0660\"", "socket_mode = 0o660"] {
            let cfg: DataConfig = toml::from_str(text).unwrap();
            assert_eq!(cfg.socket_mode, 0o660, "{text}");
        }
        assert!(toml::from_str::<DataConfig>("socket_mode = \"rw\"").is_err());
        let back: DataConfig =
            toml::from_str(&toml::to_string(&DataConfig::default()).unwrap()).unwrap();
        assert_eq!(back, DataConfig::default());
        let bad = DataConfig {
            socket_mode: 0o4777,
            max_connections_per_uid: 256,
            root_reserved_connections: Some(256),
            idle_timeout: Duration::ZERO,
            ipc_links: vec!["relative/ipc".into()],
            ..DataConfig::default()
        };
        let mut problems = Vec::new();
        bad.validate(&mut problems);
        let text = problems.join("\n");
        for key in [
            "data.socket_mode",
            "data.max_connections_per_uid",
            "data.root_reserved_connections",
            "data.idle_timeout",
            "data.ipc_links",
        ] {
            assert!(text.contains(key), "{key} not named in {text}");
        }
    }
}

//! `gse-agent` configuration (TOML), one struct per section: the agent reads
//! it, and quickstart, the testkit and the benches write it (this crate lets
//! them do so without building the agent).
//!
//! ```toml
//! [agent]
//! cloud_id = 0
//! identity_ip = "10.0.0.1"        # optional: default = the local address used upstream
//! data_dir = "/var/lib/gse-agent"
//! [upstream]
//! servers = ["gse.example:28668"]
//! [tls]
//! ca_file = "/etc/gse/certs/gseca.crt"
//! cert_file = "/etc/gse/certs/gse_agent.crt"
//! key_file = "/etc/gse/certs/gse_agent.key"
//! [file]                          # optional: file transfer (F1-F10)
//! p2p_listen = "0.0.0.0:20020"
//! upload_speed_mb = 100
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gse_core::tls::TlsFiles;
use serde::{Deserialize, Serialize};

pub mod data;
pub mod plugin;
pub mod watchdog;

pub use data::DataConfig;
pub use plugin::PluginConfig;
pub use watchdog::WatchdogConfig;

/// The whole agent config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub upstream: UpstreamConfig,
    pub tls: TlsFiles,
    #[serde(default)]
    pub file: FileConfig,
    /// `[data]`: local send socket, spool and DataServer uplink (D1-D5).
    #[serde(default)]
    pub data: DataConfig,
    /// `[plugin]`: plugin supervisor and plugin-message socket (D2, C8).
    #[serde(default)]
    pub plugin: PluginConfig,
    /// `[watchdog]`: the process supervising the agent's worker.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
}

/// `[agent]`: who this agent is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// bk_cloud_id of this host's cloud area; 0 = the direct area.
    #[serde(default)]
    pub cloud_id: i64,
    /// Identity IP (K7): the address this host is known by upstream (the
    /// CMDB's IP). Default: the local address of the upstream connection.
    #[serde(default)]
    pub identity_ip: Option<IpAddr>,
    /// Fixed agent id; default: generated once and kept in data_dir.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Where the agent keeps its state (agent id, later spool and plugins).
    pub data_dir: PathBuf,
    /// P2P zone (F8); empty = the default zone.
    #[serde(default)]
    pub zone: String,
    /// K5 region: nodes balance this agent over their region's nodes only
    /// (any node when none of them is up); empty = the whole cluster.
    #[serde(default)]
    pub region: String,
}

/// `[upstream]`: the node(s) this agent connects to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of gse-server link listeners (or a proxy), tried in turn.
    pub servers: Vec<String>,
    /// Name the server certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Local IP to connect from; default: chosen by the OS.
    #[serde(default)]
    pub bind_ip: Option<IpAddr>,
    /// Time allowed for TCP connect, TLS handshake and registration.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl UpstreamConfig {
    /// Pure checks, each problem naming its key (an agent's and a
    /// gse-proxy's `[upstream]` alike).
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.servers.is_empty() {
            problems.push("upstream.servers is empty: list at least one host:port".into());
        }
        for s in &self.servers {
            if s.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!("upstream.servers: {s:?} is not host:port"));
            }
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            problems
                .push("upstream.backoff_initial must be > 0 and <= upstream.backoff_max".into());
        }
    }
}

/// `[file]`: file transfer (F1-F10, C4): the P2P listener that serves
/// pieces to peers, and this agent's speed and memory limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the P2P listener serves pieces to peers (mutual TLS); `""` =
    /// no listener (the agent still fetches from peers and direct, but
    /// serves no one). Port 0 takes a free port, which is then advertised.
    #[serde(default = "default_p2p_listen", with = "opt_socket_addr")]
    pub p2p_listen: Option<SocketAddr>,
    /// The address peers should dial, `"ip"` or `"ip:port"`; `""` = the
    /// listener's own IP and bound port, or the identity IP when it listens
    /// on 0.0.0.0 / [::].
    #[serde(default)]
    pub p2p_advertise: String,
    /// Piece uploads served at once; requests beyond it are answered
    /// PIECE_BUSY.
    #[serde(default = "default_upload_slots")]
    pub upload_slots: u32,
    /// Agent-wide upload cap in MB/s (1 MB = 1024 * 1024 bytes); 0 = none.
    /// A transfer's own cap applies on top.
    #[serde(default)]
    pub upload_speed_mb: u64,
    /// Agent-wide download cap in MB/s; 0 = none.
    #[serde(default)]
    pub download_speed_mb: u64,
    /// Where zone-chain relays keep what they pass on; `""` =
    /// `<data_dir>/file-cache`.
    #[serde(default)]
    pub cache_dir: PathBuf,
    /// Piece bytes in flight per download (requested, not yet written), in
    /// MB; bounds memory whatever the file size.
    #[serde(default = "default_max_inflight_mb")]
    pub max_inflight_mb: u64,
    /// Time allowed for TCP connect, TLS handshake and PeerHello to a peer.
    #[serde(default = "default_p2p_connect_timeout", with = "humantime_serde")]
    pub p2p_connect_timeout: Duration,
    /// The account a transfer's source files are listed and read as when
    /// the transfer names no `user` for its source; `""` = the agent's own
    /// user. A named user is always read as that user.
    #[serde(default = "default_source_user")]
    pub default_source_user: String,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            p2p_listen: default_p2p_listen(),
            p2p_advertise: String::new(),
            upload_slots: default_upload_slots(),
            upload_speed_mb: 0,
            download_speed_mb: 0,
            cache_dir: PathBuf::new(),
            max_inflight_mb: default_max_inflight_mb(),
            p2p_connect_timeout: default_p2p_connect_timeout(),
            default_source_user: default_source_user(),
        }
    }
}

/// Default P2P port (GSE's own file-transfer port).
pub const DEFAULT_P2P_PORT: u16 = 20020;

fn default_p2p_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_P2P_PORT)))
}

fn default_upload_slots() -> u32 {
    8
}

fn default_max_inflight_mb() -> u64 {
    16
}

fn default_p2p_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// root: what GSE has always read sources as.
fn default_source_user() -> String {
    "root".into()
}

/// `""` <-> `None`, else `ip:port`.
mod opt_socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is not ip:port (e.g. \"0.0.0.0:20020\"); use \"\" for no listener"
            ))
        })
    }
}

fn default_server_name() -> String {
    gse_core::certs::DEFAULT_SERVER_NAME.into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

/// Why the config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("agent config {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("agent config always serialises")
    }

    /// Pure checks; every problem names its key and value.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.agent.cloud_id < 0 {
            problems.push(format!(
                "agent.cloud_id = {}: must be >= 0",
                self.agent.cloud_id
            ));
        }
        if let Some(ip) = self.agent.identity_ip
            && ip.is_unspecified()
        {
            problems.push(format!("agent.identity_ip = {ip}: must be a real address"));
        }
        if let Some(id) = &self.agent.agent_id
            && let Err(e) = gse_core::identity::validate_agent_id(id)
        {
            problems.push(format!("agent.agent_id: {e}"));
        }
        self.upstream.validate(&mut problems);
        self.file.validate(&mut problems);
        self.data.validate(&mut problems);
        self.plugin.validate(&mut problems);
        self.watchdog.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// A config with defaults for one of several agents on a host
    /// (quickstart, tests, benchmarks): like the defaults, but with no
    /// `ipc_links`/`message_ipc_links`, since those name host-wide paths
    /// only one agent can own, and no watchdog (the pid the caller starts
    /// is the agent itself; a test that wants one turns it on). A packaged
    /// agent's config keeps the defaults (etc/gse-agent.toml).
    pub fn new(data_dir: PathBuf, servers: Vec<String>, tls: TlsFiles) -> Self {
        AgentConfig {
            agent: AgentSection {
                cloud_id: 0,
                identity_ip: None,
                agent_id: None,
                data_dir,
                zone: String::new(),
                region: String::new(),
            },
            upstream: UpstreamConfig {
                servers,
                server_name: default_server_name(),
                bind_ip: None,
                connect_timeout: default_connect_timeout(),
                backoff_initial: default_backoff_initial(),
                backoff_max: default_backoff_max(),
            },
            tls,
            file: FileConfig::default(),
            data: DataConfig {
                ipc_links: Vec::new(),
                ..DataConfig::default()
            },
            plugin: PluginConfig {
                message_ipc_links: Vec::new(),
                ..PluginConfig::default()
            },
            watchdog: WatchdogConfig {
                enabled: false,
                ..WatchdogConfig::default()
            },
        }
    }
}

// === impl FileConfig ===

impl FileConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.upload_slots == 0 {
            problems.push("file.upload_slots = 0: must be at least 1".into());
        }
        if self.max_inflight_mb == 0 {
            problems.push("file.max_inflight_mb = 0: must be at least 1".into());
        }
        if self.p2p_connect_timeout.is_zero() {
            problems.push("file.p2p_connect_timeout must be > 0".into());
        }
        if self.default_source_user.contains(['\0', ':', '/']) {
            problems.push(format!(
                "file.default_source_user = {:?}: must be a user name (or \"\" for the agent's own user)",
                self.default_source_user
            ));
        }
        if !self.p2p_advertise.is_empty() && self.advertise().is_none() {
            problems.push(format!(
                "file.p2p_advertise = {:?}: must be \"\", an IP or ip:port",
                self.p2p_advertise
            ));
        }
    }

    /// `p2p_advertise` parsed: an IP with an optional port.
    pub fn advertise(&self) -> Option<(IpAddr, Option<u16>)> {
        let text = self.p2p_advertise.as_str();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some((addr.ip(), Some(addr.port())));
        }
        text.parse::<IpAddr>().ok().map(|ip| (ip, None))
    }

    /// The address to register as `p2p_addr`: `bound` is the listener's
    /// local address, `identity_ip` this agent's identity IP.
    pub fn advertised_addr(&self, bound: SocketAddr, identity_ip: Option<IpAddr>) -> SocketAddr {
        match self.advertise() {
            Some((ip, port)) => SocketAddr::new(ip, port.unwrap_or(bound.port())),
            None if bound.ip().is_unspecified() => match identity_ip {
                Some(ip) => SocketAddr::new(ip, bound.port()),
                None => bound,
            },
            None => bound,
        }
    }

    /// The advertised address in words, for logs and `check-config`:
    /// `listen` is the listener's address (port 0 = chosen at start),
    /// `identity_ip` the configured identity IP, if any.
    pub fn describe_advertised(&self, listen: SocketAddr, identity_ip: Option<IpAddr>) -> String {
        let port = match listen.port() {
            0 => "<port bound at start>".to_string(),
            p => p.to_string(),
        };
        let host = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        match self.advertise() {
            Some((ip, Some(p))) => format!("{} (file.p2p_advertise)", SocketAddr::new(ip, p)),
            Some((ip, None)) => format!("{}:{port} (file.p2p_advertise)", host(ip)),
            None if listen.ip().is_unspecified() => match identity_ip {
                Some(ip) => format!(
                    "{}:{port} (agent.identity_ip: p2p_listen is a wildcard and p2p_advertise is empty)",
                    host(ip)
                ),
                None => format!(
                    "<identity IP>:{port} (p2p_listen is a wildcard and p2p_advertise and identity_ip are empty: the local address of the connection to gse-server)"
                ),
            },
            None => format!("{}:{port} (the listen address)", host(listen.ip())),
        }
    }

    /// `cache_dir`, or its default under `data_dir`.
    pub fn cache_dir(&self, data_dir: &Path) -> PathBuf {
        if self.cache_dir.as_os_str().is_empty() {
            data_dir.join("file-cache")
        } else {
            self.cache_dir.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_validates() {
        let doc = include_str!("lib.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let cfg: AgentConfig = toml::from_str(&example).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.upstream.server_name, "gse-server");
    }

    #[test]
    fn shipped_example_matches_the_defaults() {
        let example: AgentConfig =
            toml::from_str(include_str!("../../../etc/gse-agent.toml")).unwrap();
        example.validate().unwrap();
        let mut defaults = AgentConfig::new(
            example.agent.data_dir.clone(),
            example.upstream.servers.clone(),
            example.tls.clone(),
        );
        // A packaged agent serves the host-wide collector paths.
        defaults.data.ipc_links = DataConfig::default().ipc_links;
        defaults.plugin.message_ipc_links = PluginConfig::default().message_ipc_links;
        // ... and runs under its watchdog.
        defaults.watchdog.enabled = true;
        assert_eq!(
            example, defaults,
            "etc/gse-agent.toml drifted from the defaults"
        );
    }

    #[test]
    fn the_packaged_config_links_the_paths_real_collectors_dial() {
        let example: AgentConfig =
            toml::from_str(include_str!("../../../etc/gse-agent.toml")).unwrap();
        let mut data: Vec<_> = example
            .data
            .ipc_links
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect();
        data.sort();
        assert_eq!(
            data,
            [
                "/usr/local/gse/agent/data/ipc.state.report",
                "/usr/local/gse/gseagent/ipc.state.report",
                "/var/run/gse2/agent/ipc.state.report",
                "/var/run/ipc.state.report",
            ]
        );
        assert_eq!(
            example.plugin.message_ipc_links,
            [PathBuf::from("/var/run/gse2/agent/ipc.state.message")]
        );
        // Agents sharing a host (quickstart, tests) own none of them.
        let local = AgentConfig::new("/d".into(), vec!["h:1".into()], example.tls.clone());
        assert!(local.data.ipc_links.is_empty() && local.plugin.message_ipc_links.is_empty());
    }

    #[test]
    fn problems_are_all_reported() {
        let mut cfg = AgentConfig::new(
            "/tmp/x".into(),
            vec!["nohost".into()],
            TlsFiles::new("a".into(), "b".into(), "c".into()),
        );
        cfg.agent.cloud_id = -1;
        cfg.file.upload_slots = 0;
        cfg.file.p2p_advertise = "nowhere".into();
        assert_eq!(cfg.validate().unwrap_err().len(), 4);
    }

    #[test]
    fn file_section_is_optional_and_typed() {
        let base = "[agent]\ndata_dir = \"/d\"\n[upstream]\nservers = [\"h:1\"]\n[tls]\nca_file = \"a\"\ncert_file = \"b\"\nkey_file = \"c\"\n";
        let cfg: AgentConfig = toml::from_str(base).unwrap();
        assert_eq!(cfg.file, FileConfig::default());
        let none: AgentConfig =
            toml::from_str(&format!("{base}[file]\np2p_listen = \"\"\n")).unwrap();
        assert_eq!(none.file.p2p_listen, None);
        assert!(
            toml::from_str::<AgentConfig>(&format!("{base}[file]\np2p_listen = \"x\"\n")).is_err()
        );
        let round: AgentConfig = toml::from_str(&none.to_toml()).unwrap();
        assert_eq!(round, none);
    }

    #[test]
    fn p2p_address_is_advertised_with_the_bound_port() {
        let mut file = FileConfig::default();
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let specific: SocketAddr = "127.0.0.5:4001".parse().unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            file.advertised_addr(any, Some(ip)).to_string(),
            "10.0.0.1:4000"
        );
        assert_eq!(file.advertised_addr(specific, Some(ip)), specific);
        file.p2p_advertise = "192.168.1.1".into();
        assert_eq!(
            file.advertised_addr(specific, Some(ip)).to_string(),
            "192.168.1.1:4001"
        );
        file.p2p_advertise = "192.168.1.1:9".into();
        assert_eq!(
            file.advertised_addr(specific, Some(ip)).to_string(),
            "192.168.1.1:9"
        );
    }

    #[test]
    fn the_advertised_address_is_described_with_where_it_comes_from() {
        let mut file = FileConfig::default();
        let any: SocketAddr = "0.0.0.0:20020".parse().unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let text = file.describe_advertised(any, Some(ip));
        assert!(
            text.starts_with("10.0.0.1:20020 (agent.identity_ip"),
            "{text}"
        );
        let text = file.describe_advertised(any, None);
        assert!(text.starts_with("<identity IP>:20020 ("), "{text}");
        let text =
            file.describe_advertised("[::]:0".parse().unwrap(), Some("fd00::1".parse().unwrap()));
        assert!(
            text.starts_with("[fd00::1]:<port bound at start>"),
            "{text}"
        );
        file.p2p_advertise = "192.0.2.5".into();
        let text = file.describe_advertised(any, Some(ip));
        assert!(
            text.starts_with("192.0.2.5:20020 (file.p2p_advertise"),
            "{text}"
        );
        file.p2p_advertise = String::new();
        let text = file.describe_advertised("127.0.0.5:7".parse().unwrap(), Some(ip));
        assert!(
            text.starts_with("127.0.0.5:7 (the listen address"),
            "{text}"
        );
    }
}

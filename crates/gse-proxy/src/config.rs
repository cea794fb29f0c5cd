//! gse-proxy's config file (TOML; every key with its default and meaning:
//! `etc/gse-proxy.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gse_agent_config::UpstreamConfig;
use gse_core::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub proxy: ProxySection,
    /// The servers (a gse-server cluster's agent-link addresses) or, in a
    /// chain, the next proxy up; tried in turn. The same section as an
    /// agent's.
    pub upstream: UpstreamConfig,
    /// The proxy's certificate (`gse-server certs issue --proxy-area N`),
    /// used both ways: towards its agents as their server, upstream as a
    /// proxy.
    pub tls: TlsFiles,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub file: FileSection,
}

/// `[file]`: the pieces kept for the area's targets (F8).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// Where pieces fetched upstream are kept; emptied at start.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Most bytes kept, in MB (1 MB = 1048576 bytes); the least recently
    /// used pieces go first.
    #[serde(default = "default_cache_max_mb")]
    pub cache_max_mb: u64,
    /// A transfer's pieces are removed once no target asked for any of
    /// them for this long.
    #[serde(default = "default_cache_idle", with = "humantime_serde")]
    pub cache_idle: Duration,
}

impl Default for FileSection {
    fn default() -> Self {
        FileSection {
            cache_dir: default_cache_dir(),
            cache_max_mb: default_cache_max_mb(),
            cache_idle: default_cache_idle(),
        }
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/gse-proxy/file-cache")
}

fn default_cache_max_mb() -> u64 {
    4096
}

fn default_cache_idle() -> Duration {
    Duration::from_secs(600)
}

/// `[proxy]`: who this proxy is and where its area's agents reach it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// This proxy's id, unique in the cluster: letters, digits, '.', '-',
    /// '_' or ':' (at most 128). Agents behind it are located through it.
    pub id: String,
    /// The cloud area (`bk_cloud_id`) it serves; not 0. Only agents of
    /// this area may connect.
    pub bk_cloud_id: i64,
    /// Where the area's agents (and the proxies below this one in a
    /// chain) connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the area's agents (and lower proxies) send their data (C10):
    /// each data link is relayed to the DataServer the node names, which
    /// acknowledges every batch itself.
    #[serde(default = "default_data_listen")]
    pub data_listen: SocketAddr,
    /// The address agents are told their parent is (`parent_ip`); needed
    /// when `listen` is a wildcard address.
    #[serde(default)]
    pub advertise_ip: Option<IpAddr>,
    /// Time for an agent's TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Agents relayed at once; more are refused (they try their next
    /// proxy).
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    /// Connections still in their TLS handshake, in all and per address.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_per_ip: usize,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ip:port` serving `GET /metrics`; unset: no endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    // GSE's proxy binds :: at the agents' cluster port (COMPAT 4.1).
    SocketAddr::from(([0u16; 8], 28668))
}

fn default_data_listen() -> SocketAddr {
    // GSE's agents send data to port 28625 (COMPAT 4.1).
    SocketAddr::from(([0u16; 8], 28625))
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_agents() -> usize {
    // A node takes at most 50,000 agents per proxy link.
    50_000
}

fn default_max_pending() -> usize {
    1024
}

fn default_max_pending_per_ip() -> usize {
    64
}

/// Why the config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse the config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("the config file {path} has problems:\n  - {}", problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ProxyConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: ProxyConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
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
        toml::to_string_pretty(self).expect("proxy config always serialises")
    }

    /// Pure checks; every problem names its key and value.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let p = &self.proxy;
        if !gse_link::proxy::proxy_id_ok(&p.id) {
            problems.push(format!(
                "proxy.id = {:?}: 1 to 128 letters, digits, '.', '-', '_' or ':'",
                p.id
            ));
        }
        if p.bk_cloud_id <= 0 {
            problems.push(format!(
                "proxy.bk_cloud_id = {}: a proxy serves a cloud area > 0 (area 0 reaches the servers directly)",
                p.bk_cloud_id
            ));
        }
        match p.advertise_ip {
            Some(ip) if ip.is_unspecified() => problems.push(format!(
                "proxy.advertise_ip = {ip}: must be an address the area's agents reach"
            )),
            None if p.listen.ip().is_unspecified() => problems.push(format!(
                "proxy.listen = {} is a wildcard address: set proxy.advertise_ip to the address the area's agents reach this proxy at (they are told it as their parent)",
                p.listen
            )),
            _ => {}
        }
        if p.handshake_timeout.is_zero() {
            problems.push("proxy.handshake_timeout must be > 0".into());
        }
        if p.max_agents == 0 || p.max_pending == 0 || p.max_pending_per_ip == 0 {
            problems.push(
                "proxy.max_agents, proxy.max_pending and proxy.max_pending_per_ip must be > 0"
                    .into(),
            );
        }
        if self.file.cache_max_mb == 0 || self.file.cache_dir.as_os_str().is_empty() {
            problems.push(
                "file.cache_dir must name a directory and file.cache_max_mb be > 0 (the area's targets share what the proxy fetched)".into(),
            );
        }
        self.upstream.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The address agents are told their parent is, for a listener bound
    /// at `bound`.
    pub fn agent_addr(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.proxy.advertise_ip.unwrap_or(bound.ip()), bound.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../etc/gse-proxy.toml");

    #[test]
    fn the_shipped_file_parses_and_says_what_is_missing() {
        let cfg: ProxyConfig = toml::from_str(SHIPPED).expect("etc/gse-proxy.toml parses");
        assert_eq!(cfg.proxy.listen.port(), 28668);
        cfg.validate().expect("the shipped file is valid");
        let mut bad = cfg.clone();
        bad.proxy.advertise_ip = None;
        bad.proxy.bk_cloud_id = 0;
        bad.proxy.id = "a b".into();
        let problems = bad.validate().unwrap_err().join("\n");
        for key in ["proxy.id", "proxy.bk_cloud_id", "proxy.advertise_ip"] {
            assert!(problems.contains(key), "{problems}");
        }
    }
}

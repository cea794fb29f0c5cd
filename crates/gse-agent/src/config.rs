//! `gse-agent` configuration (TOML), one struct per section.
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
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gse_core::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// The whole agent config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub upstream: UpstreamConfig,
    pub tls: TlsFiles,
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
        if self.upstream.servers.is_empty() {
            problems.push("upstream.servers is empty: list at least one host:port".into());
        }
        for s in &self.upstream.servers {
            if s.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!("upstream.servers: {s:?} is not host:port"));
            }
        }
        if self.upstream.backoff_initial.is_zero()
            || self.upstream.backoff_max < self.upstream.backoff_initial
        {
            problems
                .push("upstream.backoff_initial must be > 0 and <= upstream.backoff_max".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// A config with defaults for one agent (quickstart, tests).
    pub fn new(data_dir: PathBuf, servers: Vec<String>, tls: TlsFiles) -> Self {
        AgentConfig {
            agent: AgentSection {
                cloud_id: 0,
                identity_ip: None,
                agent_id: None,
                data_dir,
                zone: String::new(),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_validates() {
        let doc = include_str!("config.rs");
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
        let defaults = AgentConfig::new(
            example.agent.data_dir.clone(),
            example.upstream.servers.clone(),
            example.tls.clone(),
        );
        assert_eq!(
            example, defaults,
            "etc/gse-agent.toml drifted from the defaults"
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let mut cfg = AgentConfig::new(
            "/tmp/x".into(),
            vec!["nohost".into()],
            TlsFiles {
                ca_file: "a".into(),
                cert_file: "b".into(),
                key_file: "c".into(),
            },
        );
        cfg.agent.cloud_id = -1;
        assert_eq!(cfg.validate().unwrap_err().len(), 2);
    }
}

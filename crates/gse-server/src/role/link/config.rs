//! `[link]` config section: where agents connect and how their liveness is judged.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The agent link listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Address agents connect to (GSE 2.0's io_port is 28668).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Heartbeat period asked of agents.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is disconnected and counted as lost.
    #[serde(default = "default_heartbeat_timeout", with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Time a new connection has for the TLS handshake and its Register.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most connections at once that have not finished their TLS handshake
    /// and Register; further ones are closed at once. At most an eighth of
    /// the open-files limit. Registered agents are not counted.
    #[serde(default = "default_max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// Most such connections at once from one address (IPv6: one /64);
    /// lowered in proportion when `max_pending_handshakes` is lowered to
    /// fit the open-files limit.
    #[serde(default = "default_max_pending_handshakes_per_ip")]
    pub max_pending_handshakes_per_ip: usize,
    /// Largest frame body accepted from an agent, bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 28668))
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_pending_handshakes() -> usize {
    1024
}

fn default_max_pending_handshakes_per_ip() -> usize {
    128
}

fn default_max_frame_bytes() -> usize {
    gse_proto::frame::DEFAULT_MAX_BODY
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            listen: default_listen(),
            heartbeat_interval: default_heartbeat_interval(),
            heartbeat_timeout: default_heartbeat_timeout(),
            handshake_timeout: default_handshake_timeout(),
            max_pending_handshakes: default_max_pending_handshakes(),
            max_pending_handshakes_per_ip: default_max_pending_handshakes_per_ip(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl LinkConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.heartbeat_interval < Duration::from_millis(100) {
            problems.push("link.heartbeat_interval is below 100ms".into());
        }
        if self.heartbeat_timeout < self.heartbeat_interval * 2 {
            problems.push(format!(
                "link.heartbeat_timeout ({}) must be at least twice link.heartbeat_interval ({})",
                humantime::format_duration(self.heartbeat_timeout),
                humantime::format_duration(self.heartbeat_interval)
            ));
        }
        if self.heartbeat_timeout > Duration::from_secs(24) {
            problems.push(format!(
                "link.heartbeat_timeout = {}: at most 24s, so that status is never older than 24 s (K3)",
                humantime::format_duration(self.heartbeat_timeout)
            ));
        }
        problems.extend(crate::fd_budget::pending_problems(
            "link",
            self.handshake_timeout,
            self.max_pending_handshakes,
            self.max_pending_handshakes_per_ip,
        ));
        if self.max_frame_bytes < 4096 {
            problems.push(format!(
                "link.max_frame_bytes = {}: at least 4096",
                self.max_frame_bytes
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_pending_caps_are_named() {
        assert!(LinkConfig::default().problems().is_empty());
        let bad = LinkConfig {
            handshake_timeout: Duration::ZERO,
            max_pending_handshakes: 10,
            max_pending_handshakes_per_ip: 11,
            ..LinkConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("link.handshake_timeout"), "{p:?}");
        assert!(
            p[1].contains("link.max_pending_handshakes_per_ip = 11"),
            "{p:?}"
        );
    }
}

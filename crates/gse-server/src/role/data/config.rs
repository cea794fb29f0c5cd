//! `[data]` config section: the DataServers of this node (C5, D4).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default DataServer port (GSE 2.0's data_port).
pub const DEFAULT_DATA_PORT: u16 = 28625;
/// Default data id of the agents' system snapshot (D3).
pub const DEFAULT_SNAPSHOT_DATA_ID: u32 = 1_100_001;

/// `[data]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// One DataServer per address (several in one process share the load,
    /// D4). Port 0 takes a free port.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Host told to agents in their DataServer endpoint; default: the
    /// listen IP, or the agent's parent IP when listening on a wildcard
    /// (`role::data::endpoint`).
    #[serde(default)]
    pub advertise_host: Option<String>,
    /// Largest batch body accepted from an agent, bytes (told to agents in
    /// DataHelloAck; a larger frame closes the link). At least
    /// `gse_proto::MAX_BATCH_BYTES` (one largest record, which agents
    /// accept from collectors, in a batch of its own): a smaller value
    /// (such as the old default, 8388608) is raised to it at load, with a
    /// WARN. Agents never send more, so a larger value changes nothing.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How often agents are moved between DataServers by load (D4).
    #[serde(default = "default_rebalance_interval", with = "humantime_serde")]
    pub rebalance_interval: Duration,
    /// Data id of the agents' system snapshot (D3), given to the snapshot
    /// cache.
    #[serde(default = "default_snapshot_data_id")]
    pub snapshot_data_id: u32,
    /// Time a new data link has for its TLS handshake and DataHello.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most connections at once, to all DataServers of the node, that have
    /// not finished their TLS handshake and DataHello; further ones are
    /// closed at once. At most an eighth of the open-files limit.
    #[serde(default = "default_max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// Most such connections at once from one address (IPv6: one /64);
    /// lowered in proportion when `max_pending_handshakes` is lowered to
    /// fit the open-files limit.
    #[serde(default = "default_max_pending_handshakes_per_ip")]
    pub max_pending_handshakes_per_ip: usize,
    /// Batches of one agent link being stored at once.
    #[serde(default = "default_batches_in_progress")]
    pub batches_in_progress: usize,
    /// `[data.snapshot]`: how much of the agents' system snapshots (D3) the
    /// snapshot cache keeps.
    #[serde(default)]
    pub snapshot: super::snapshot::SnapshotCacheConfig,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_DATA_PORT))]
}
fn default_max_batch_bytes() -> usize {
    gse_proto::MAX_BATCH_BYTES
}
fn default_rebalance_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_snapshot_data_id() -> u32 {
    DEFAULT_SNAPSHOT_DATA_ID
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
fn default_batches_in_progress() -> usize {
    8
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            listen: default_listen(),
            advertise_host: None,
            max_batch_bytes: default_max_batch_bytes(),
            rebalance_interval: default_rebalance_interval(),
            snapshot_data_id: default_snapshot_data_id(),
            handshake_timeout: default_handshake_timeout(),
            max_pending_handshakes: default_max_pending_handshakes(),
            max_pending_handshakes_per_ip: default_max_pending_handshakes_per_ip(),
            batches_in_progress: default_batches_in_progress(),
            snapshot: Default::default(),
        }
    }
}

// === impl DataConfig ===

impl DataConfig {
    /// Fixes values an older config may hold: a `max_batch_bytes` below
    /// one largest record's batch (the old 8 MiB default, written out
    /// explicitly) is raised to it, with a WARN naming the key, instead of
    /// refusing to start after an upgrade.
    pub fn resolve(&mut self) {
        let min = gse_proto::MAX_BATCH_BYTES;
        if self.max_batch_bytes < min {
            tracing::warn!(
                "data.max_batch_bytes = {} is below {min}, the batch of one largest record \
                 ({} bytes, which agents accept from collectors); using {min} (raise the key, or \
                 remove it to take the default)",
                self.max_batch_bytes,
                gse_proto::MAX_RECORD_BYTES
            );
            self.max_batch_bytes = min;
        }
    }

    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.is_empty() {
            p.push(
                "data.listen is empty: give at least one address (e.g. \"0.0.0.0:28625\")".into(),
            );
        }
        let min = gse_proto::MAX_BATCH_BYTES;
        if self.max_batch_bytes < min || self.max_batch_bytes > 64 << 20 {
            p.push(format!(
                "data.max_batch_bytes = {}: must be {min}..=67108864 (agents accept records of \
                 up to {} bytes and send each in a batch the DataServer must take)",
                self.max_batch_bytes,
                gse_proto::MAX_RECORD_BYTES
            ));
        }
        if self.rebalance_interval < Duration::from_secs(1) {
            p.push("data.rebalance_interval must be at least 1s".into());
        }
        p.extend(crate::fd_budget::pending_problems(
            "data",
            self.handshake_timeout,
            self.max_pending_handshakes,
            self.max_pending_handshakes_per_ip,
        ));
        if self.batches_in_progress == 0 || self.batches_in_progress > 256 {
            p.push(format!(
                "data.batches_in_progress = {}: must be 1..=256",
                self.batches_in_progress
            ));
        }
        if self
            .advertise_host
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.contains(' '))
        {
            p.push("data.advertise_host must be a host name or IP".into());
        }
        p.extend(self.snapshot.problems());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_named() {
        assert!(DataConfig::default().problems().is_empty());
        let bad = DataConfig {
            listen: Vec::new(),
            rebalance_interval: Duration::ZERO,
            ..DataConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("data.listen"));
        // The old 8 MiB default is below one largest record's batch.
        let small = DataConfig {
            max_batch_bytes: 8 << 20,
            ..DataConfig::default()
        };
        let p = small.problems();
        assert!(
            p.len() == 1 && p[0].contains(&gse_proto::MAX_RECORD_BYTES.to_string()),
            "{p:?}"
        );
    }

    #[test]
    fn the_old_batch_default_is_raised_with_a_warning_not_refused() {
        let mut cfg: DataConfig = toml::from_str("max_batch_bytes = 8388608").unwrap();
        cfg.resolve();
        assert_eq!(cfg.max_batch_bytes, gse_proto::MAX_BATCH_BYTES);
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        // Values in range are kept; too large ones are still refused.
        for (bytes, ok) in [(gse_proto::MAX_BATCH_BYTES + 1, true), (65 << 20, false)] {
            let mut cfg = DataConfig {
                max_batch_bytes: bytes,
                ..DataConfig::default()
            };
            cfg.resolve();
            assert_eq!(cfg.max_batch_bytes, bytes);
            assert_eq!(cfg.problems().is_empty(), ok, "{bytes}");
        }
    }
}

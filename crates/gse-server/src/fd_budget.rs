//! How the node shares its open-files limit (RLIMIT_NOFILE) among the
//! connections nobody has authenticated yet, so that no unauthenticated
//! client can take the descriptors the API, registered agents, the store
//! and the logs need.
//!
//! Three kinds of connection are capped ([`FdBudget::plan`]), each in all
//! and per client address ([`ConnLimits`]):
//! - agent-link connections before their Register is accepted (`[link]
//!   max_pending_handshakes`, `_per_ip`), at most an eighth of the limit;
//! - DataServer connections before their DataHello is accepted (`[data]
//!   max_pending_handshakes`, `_per_ip`, all DataServers of the node
//!   together), at most an eighth of the limit;
//! - API connections (`[api] max_connections`, `_per_ip`), at most what is
//!   left after `api.fd_reserve` and the two caps above, but at least a
//!   quarter of the limit.
//!
//! So unauthenticated clients hold at most the limit minus `fd_reserve`,
//! or half of it when the limit is small. Registered agents are not capped
//! here: serving them is the point (raise the limit with the fleet).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Role, ServerConfig};
use gse_link::limits::{CapNames, ConnLimits};

/// The caps of API connections.
pub const API: CapNames = CapNames {
    total: "over api.max_connections",
    per_ip: "over api.max_connections_per_ip",
    gauge: "gse_api_connections",
};
/// The caps of agent-link connections before Register.
pub const LINK_PENDING: CapNames = CapNames {
    total: "over link.max_pending_handshakes",
    per_ip: "over link.max_pending_handshakes_per_ip",
    gauge: "gse_link_pending_handshakes",
};
/// The caps of DataServer connections before DataHello.
pub const DATA_PENDING: CapNames = CapNames {
    total: "over data.max_pending_handshakes",
    per_ip: "over data.max_pending_handshakes_per_ip",
    gauge: "gse_data_pending_handshakes",
};

/// The two caps of one kind of connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_ip: usize,
}

/// The caps of every listener of the node, within its open-files limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    pub open_files: u64,
    pub api: Caps,
    /// Zero when the node does not run the link role.
    pub link_pending: Caps,
    /// Zero when the node does not run the data role.
    pub data_pending: Caps,
}

/// The soft open-files limit of this process (unbounded if unknown).
pub fn open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

// === impl FdBudget ===

impl FdBudget {
    /// The caps `config` asks for, lowered to fit `open_files` descriptors.
    pub fn plan(config: &ServerConfig, open_files: u64) -> FdBudget {
        let limit = usize::try_from(open_files).unwrap_or(usize::MAX);
        let none = Caps {
            total: 0,
            per_ip: 0,
        };
        let link_pending = match config.has_role(Role::Link) {
            true => pending(
                limit,
                config.link.max_pending_handshakes,
                config.link.max_pending_handshakes_per_ip,
            ),
            false => none,
        };
        let data_pending = match config.has_role(Role::Data) {
            true => pending(
                limit,
                config.data.max_pending_handshakes,
                config.data.max_pending_handshakes_per_ip,
            ),
            false => none,
        };
        let reserved = config
            .api
            .fd_reserve
            .saturating_add(link_pending.total)
            .saturating_add(data_pending.total);
        let total = config.api.max_connections.min(api_share(limit, reserved));
        FdBudget {
            open_files,
            api: Caps {
                total,
                per_ip: config.api.max_connections_per_ip.min(total),
            },
            link_pending,
            data_pending,
        }
    }

    pub fn api_limits(&self) -> Arc<ConnLimits> {
        Arc::new(ConnLimits::new(self.api.total, self.api.per_ip, API))
    }

    pub fn link_pending_limits(&self) -> Arc<ConnLimits> {
        let c = self.link_pending;
        Arc::new(ConnLimits::new(c.total, c.per_ip, LINK_PENDING))
    }

    pub fn data_pending_limits(&self) -> Arc<ConnLimits> {
        let c = self.data_pending;
        Arc::new(ConnLimits::new(c.total, c.per_ip, DATA_PENDING))
    }
}

/// API connections allowed with `limit` descriptors when `reserved` are
/// kept for everything else: the rest, but at least a quarter of the
/// limit (a tiny limit still leaves the API usable).
fn api_share(limit: usize, reserved: usize) -> usize {
    limit.saturating_sub(reserved).max(limit / 4).max(1)
}

/// Pending-handshake caps within an eighth of `limit`. A global cap
/// lowered to fit lowers the per-address cap in proportion, so one
/// address still takes only its configured share.
fn pending(limit: usize, max: usize, max_per_ip: usize) -> Caps {
    let total = max.min(limit / 8).max(1);
    let per_ip = if total < max {
        (max_per_ip as u128 * total as u128 / max as u128) as usize
    } else {
        max_per_ip
    };
    Caps {
        total,
        per_ip: per_ip.clamp(1, total),
    }
}

/// Problems with a listener's handshake timeout and pending-handshake
/// caps (`[link]` and `[data]` have the same keys), each naming its key.
pub fn pending_problems(
    section: &str,
    timeout: Duration,
    max: usize,
    max_per_ip: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if timeout < Duration::from_millis(100) {
        problems.push(format!(
            "{section}.handshake_timeout = {}: at least 100ms",
            humantime::format_duration(timeout)
        ));
    }
    if max == 0 {
        problems.push(format!("{section}.max_pending_handshakes = 0: at least 1"));
    }
    if max_per_ip == 0 || max_per_ip > max.max(1) {
        problems.push(format!(
            "{section}.max_pending_handshakes_per_ip = {max_per_ip}: must be 1..={} \
             ({section}.max_pending_handshakes)",
            max.max(1)
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(roles: &[Role]) -> ServerConfig {
        let tls = gse_core::tls::TlsFiles::new("ca".into(), "crt".into(), "key".into());
        let mut c = ServerConfig::with_defaults("/tmp/x".into(), tls);
        c.node.roles = roles.to_vec();
        c
    }

    fn caps(total: usize, per_ip: usize) -> Caps {
        Caps { total, per_ip }
    }

    #[test]
    fn a_large_limit_gives_every_listener_its_configured_caps() {
        let plan = FdBudget::plan(&config(&[Role::Api, Role::Link, Role::Data]), 1 << 20);
        assert_eq!(plan.api, caps(4096, 1024));
        assert_eq!(plan.link_pending, caps(1024, 128));
        assert_eq!(plan.data_pending, caps(1024, 128));
    }

    #[test]
    fn unauthenticated_connections_leave_the_reserve_or_half_the_limit() {
        let all = config(&[Role::Api, Role::Link, Role::Data]);
        for limit in [64u64, 256, 1024, 4096, 8192, 65536] {
            let plan = FdBudget::plan(&all, limit);
            let held = plan.api.total + plan.link_pending.total + plan.data_pending.total;
            let left = limit as usize - held;
            assert!(
                left >= 1024.min(limit as usize / 2),
                "limit {limit}: {plan:?} leaves {left}"
            );
            // One address never takes more than its share of the handshakes.
            assert!(plan.link_pending.per_ip <= plan.link_pending.total.div_ceil(8));
        }
        let small = FdBudget::plan(&all, 256);
        assert_eq!(small.link_pending, caps(32, 4));
        assert_eq!(small.api, caps(64, 64));
    }

    #[test]
    fn only_the_roles_that_run_take_a_share() {
        let api_only = FdBudget::plan(&config(&[Role::Api]), 4096);
        assert_eq!(api_only.api.total, 3072);
        assert_eq!(api_only.link_pending.total, 0);
        let all = FdBudget::plan(&config(&[Role::Api, Role::Link, Role::Data]), 4096);
        assert_eq!(all.api.total, 2048);
    }

    #[test]
    fn the_api_keeps_a_quarter_of_a_tiny_limit() {
        assert_eq!(api_share(1 << 20, 1024), (1 << 20) - 1024);
        assert_eq!(api_share(256, 128), 128);
        assert_eq!(api_share(1024, 1024), 256);
        assert_eq!(api_share(2, 1024), 1);
    }
}

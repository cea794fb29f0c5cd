//! How many API connections may be open at once: in all, per client
//! address, and within the process's open-files limit.
//!
//! The global cap is `api.max_connections`, lowered to what the open-files
//! limit leaves after `api.fd_reserve` (the agent and data links, the store
//! and the logs must never be starved by API clients: a full descriptor
//! table made the agent link fail with "Too many open files"). The cap per
//! address keeps one client from taking every connection; IPv6 clients are
//! counted per /64, the block one host usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::config::ApiConfig;
use super::error::ApiError;

/// Caps on open API connections, and their counts now.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_total` connections are open.
    Total { limit: usize },
    /// `max_per_ip` connections from this client's address are open.
    PerIp { ip: IpAddr, limit: usize },
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

/// Connections the API may hold when the process may open `open_files`
/// descriptors and `reserve` of them are kept for everything else: the
/// rest, but at least a quarter of the limit (a tiny limit still leaves
/// the API usable).
pub fn fd_budget(open_files: u64, reserve: usize) -> usize {
    let limit = usize::try_from(open_files).unwrap_or(usize::MAX);
    limit.saturating_sub(reserve).max(limit / 4).max(1)
}

/// The address a connection is counted under: IPv4 as is (also when
/// mapped into IPv6), IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

// === impl ConnLimits ===

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            max_total,
            max_per_ip: max_per_ip.min(max_total),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// The caps `config` asks for, within `open_files` descriptors.
    pub fn from_config(config: &ApiConfig, open_files: u64) -> Self {
        let total = config
            .max_connections
            .min(fd_budget(open_files, config.fd_reserve));
        ConnLimits::new(total, config.max_connections_per_ip)
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    /// Takes a place for a connection from `ip`, or says which cap is hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let key = key(ip);
        let mut counts = self.counts.lock();
        if counts.total >= self.max_total {
            return Err(Refusal::Total {
                limit: self.max_total,
            });
        }
        let from_ip = counts.per_ip.entry(key).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::PerIp {
                ip,
                limit: self.max_per_ip,
            });
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnPermit {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.key);
            }
        }
    }
}

// === impl Refusal ===

impl Refusal {
    /// The error the refused client is answered with (503).
    pub fn error(&self) -> ApiError {
        match *self {
            Refusal::Total { limit } => ApiError::TooManyConnections { limit },
            Refusal::PerIp { ip, limit } => ApiError::TooManyConnectionsFrom {
                addr: ip.to_string(),
                limit,
            },
        }
    }

    /// Short reason for the refusal log and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Total { .. } => "over api.max_connections",
            Refusal::PerIp { .. } => "over api.max_connections_per_ip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_leaves_room_for_others_and_places_come_back() {
        let limits = Arc::new(ConnLimits::new(5, 2));
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        let refused = limits.admit(ip("10.0.0.1")).map(|_| ()).unwrap_err();
        assert_eq!(refused.reason(), "over api.max_connections_per_ip");
        assert!(refused.error().to_string().contains("10.0.0.1"));
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn global_cap_refuses_every_address() {
        let limits = Arc::new(ConnLimits::new(2, 2));
        let _held: Vec<_> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|a| limits.admit(ip(a)).unwrap())
            .collect();
        let refused = limits.admit(ip("10.0.0.3")).map(|_| ()).unwrap_err();
        assert_eq!(refused, Refusal::Total { limit: 2 });
        assert_eq!(refused.error().code(), 1000503);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(ConnLimits::new(10, 1));
        let _a = limits.admit(ip("2001:db8::1")).unwrap();
        assert!(limits.admit(ip("2001:db8::ffff:2")).is_err());
        let _b = limits.admit(ip("2001:db8:0:1::1")).unwrap();
        let _c = limits.admit(ip("10.0.0.1")).unwrap();
        assert!(limits.admit(ip("::ffff:10.0.0.1")).is_err());
    }

    #[test]
    fn the_open_files_limit_bounds_the_cap() {
        assert_eq!(fd_budget(1 << 20, 1024), (1 << 20) - 1024);
        assert_eq!(fd_budget(256, 128), 128);
        // A limit at or below the reserve still leaves a quarter.
        assert_eq!(fd_budget(1024, 1024), 256);
        let cfg = ApiConfig::default();
        assert_eq!(ConnLimits::from_config(&cfg, 4096).max_total(), 3072);
        assert_eq!(ConnLimits::from_config(&cfg, 1 << 20).max_total(), 4096);
        assert_eq!(ConnLimits::from_config(&cfg, 1 << 20).max_per_ip(), 1024);
        // The per-address cap never exceeds the global one.
        assert_eq!(ConnLimits::new(3, 10).max_per_ip(), 3);
    }
}

//! How many connections of one kind a listener holds at once: in all and
//! per client address. One mechanism for every TCP listener of a node:
//! the API's connections, and the connections of the agent link, the
//! DataServers (and, later, the node link and the proxy) that have not yet
//! finished their TLS handshake and hello ([`crate::accept`]).
//!
//! Each listener admits a connection ([`ConnLimits::admit`]) before it
//! spends anything on it and keeps the [`ConnPermit`] as long as the
//! connection counts; a refused one is closed by the listener at once. The
//! caps themselves, and how they share the open-files limit, are the
//! server's (`gse_server::fd_budget`). IPv6 clients are counted per /64,
//! the block one host usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Names of one listener's caps, as refusals, logs and metrics show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapNames {
    /// The refusal reason of the global cap: "over `<its config key>`".
    pub total: &'static str,
    /// The refusal reason of the per-address cap.
    pub per_ip: &'static str,
    /// The gauge that shows how many connections count now.
    pub gauge: &'static str,
}

/// Caps on open connections of one kind, and their counts now.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    names: CapNames,
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
    /// `limit` connections are open in all.
    Total { limit: usize, reason: &'static str },
    /// `limit` connections from this client's address are open.
    PerIp {
        ip: IpAddr,
        limit: usize,
        reason: &'static str,
    },
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    key: IpAddr,
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
    /// At most `max_total` connections, `max_per_ip` of one address (never
    /// more than `max_total`); at least one of each.
    pub fn new(max_total: usize, max_per_ip: usize, names: CapNames) -> Self {
        let max_total = max_total.max(1);
        ConnLimits {
            max_total,
            max_per_ip: max_per_ip.clamp(1, max_total),
            names,
            counts: Mutex::new(Counts::default()),
        }
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
                reason: self.names.total,
            });
        }
        let from_ip = counts.per_ip.entry(key).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::PerIp {
                ip,
                limit: self.max_per_ip,
                reason: self.names.per_ip,
            });
        }
        *from_ip += 1;
        counts.total += 1;
        metrics::gauge!(self.names.gauge).set(counts.total as f64);
        Ok(ConnPermit {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut counts = limits.counts.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.key);
            }
        }
        metrics::gauge!(limits.names.gauge).set(counts.total as f64);
    }
}

// === impl Refusal ===

impl Refusal {
    /// Short reason for the refusal log and metrics: "over `<config key>`".
    pub fn reason(&self) -> &'static str {
        match *self {
            Refusal::Total { reason, .. } | Refusal::PerIp { reason, .. } => reason,
        }
    }

    /// The config key of the cap that was hit.
    pub fn key(&self) -> &'static str {
        let reason = self.reason();
        reason.strip_prefix("over ").unwrap_or(reason)
    }

    pub fn limit(&self) -> usize {
        match *self {
            Refusal::Total { limit, .. } | Refusal::PerIp { limit, .. } => limit,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total { limit, .. } => {
                write!(f, "{limit} open at once in all (config {})", self.key())
            }
            Refusal::PerIp { ip, limit, .. } => {
                write!(f, "{limit} open at once from {ip} (config {})", self.key())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: CapNames = CapNames {
        total: "over test.max",
        per_ip: "over test.max_per_ip",
        gauge: "gse_test_open",
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_leaves_room_for_others_and_places_come_back() {
        let limits = Arc::new(ConnLimits::new(5, 2, NAMES));
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        let refused = limits.admit(ip("10.0.0.1")).map(|_| ()).unwrap_err();
        assert_eq!(refused.reason(), "over test.max_per_ip");
        assert_eq!(refused.key(), "test.max_per_ip");
        assert_eq!(
            refused.to_string(),
            "2 open at once from 10.0.0.1 (config test.max_per_ip)"
        );
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn global_cap_refuses_every_address() {
        let limits = Arc::new(ConnLimits::new(2, 2, NAMES));
        let _held: Vec<_> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|a| limits.admit(ip(a)).unwrap())
            .collect();
        let refused = limits.admit(ip("10.0.0.3")).map(|_| ()).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Total {
                limit: 2,
                reason: "over test.max"
            }
        );
        assert_eq!(refused.limit(), 2);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(ConnLimits::new(10, 1, NAMES));
        let _a = limits.admit(ip("2001:db8::1")).unwrap();
        assert!(limits.admit(ip("2001:db8::ffff:2")).is_err());
        let _b = limits.admit(ip("2001:db8:0:1::1")).unwrap();
        let _c = limits.admit(ip("10.0.0.1")).unwrap();
        assert!(limits.admit(ip("::ffff:10.0.0.1")).is_err());
    }

    #[test]
    fn caps_are_at_least_one_and_per_address_within_the_total() {
        let limits = ConnLimits::new(3, 10, NAMES);
        assert_eq!((limits.max_total(), limits.max_per_ip()), (3, 3));
        let limits = ConnLimits::new(0, 0, NAMES);
        assert_eq!((limits.max_total(), limits.max_per_ip()), (1, 1));
    }
}

//! Whether a host answers at all (C11): when an agent is lost, the
//! operator's first question is whether the host or only the agent is
//! down. A node probes the hosts it can reach; a gse-proxy probes its
//! area's, for the node.
//!
//! [`probe`] tries an ICMP echo (a ping socket where the system permits
//! one, else a raw socket, which needs root or CAP_NET_RAW), then, when
//! ICMP is not permitted or got no reply, a TCP connect to the configured
//! port: an accepted or refused connection both mean the host is up (a
//! refusal is its kernel answering).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reachable: bool,
    /// The probe(s) used, as the alarm shows them: "icmp", "tcp:22",
    /// "icmp+tcp:22", or "none (why)" when nothing could be tried.
    pub probe: String,
}

impl Verdict {
    /// No probe could be made; `why` says so.
    pub fn none(why: impl std::fmt::Display) -> Self {
        Verdict {
            reachable: false,
            probe: format!("none ({why})"),
        }
    }
}

/// How to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// TCP port to connect to when ICMP is not permitted or not answered;
    /// 0: none.
    pub tcp_port: u16,
    /// Time for each probe.
    pub timeout: Duration,
}

/// Probes `ip`: ICMP echo, then a TCP connect (see the module doc).
pub async fn probe(ip: IpAddr, spec: ProbeSpec) -> Verdict {
    let icmp = match icmp_client(ip) {
        Some(client) => Some(echo(client, ip, spec.timeout).await),
        None => None,
    };
    if icmp == Some(true) {
        return Verdict {
            reachable: true,
            probe: "icmp".into(),
        };
    }
    let tried_icmp = if icmp.is_some() { "icmp+" } else { "" };
    if spec.tcp_port == 0 {
        return match icmp {
            Some(_) => Verdict {
                reachable: false,
                probe: "icmp".into(),
            },
            None => Verdict::none("ICMP not permitted here and no TCP port configured"),
        };
    }
    let addr = SocketAddr::new(ip, spec.tcp_port);
    let reachable = match timeout(spec.timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == ErrorKind::ConnectionRefused,
        Err(_) => false,
    };
    Verdict {
        reachable,
        probe: format!("{tried_icmp}tcp:{}", spec.tcp_port),
    }
}

/// One ICMP client per address family for the process (one socket each),
/// or `None` when this process may open no ICMP socket.
fn icmp_client(ip: IpAddr) -> Option<&'static Client> {
    static V4: OnceLock<Option<Client>> = OnceLock::new();
    static V6: OnceLock<Option<Client>> = OnceLock::new();
    let (cell, kind) = match ip {
        IpAddr::V4(_) => (&V4, ICMP::V4),
        IpAddr::V6(_) => (&V6, ICMP::V6),
    };
    cell.get_or_init(|| match Client::new(&Config::builder().kind(kind).build()) {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::info!(error = %e, "no ICMP socket permitted: lost hosts are probed by TCP connect only");
            None
        }
    })
    .as_ref()
}

/// One echo request; whether a reply came within `limit`.
async fn echo(client: &Client, ip: IpAddr, limit: Duration) -> bool {
    let mut pinger = client.pinger(ip, PingIdentifier(rand::random())).await;
    pinger.timeout(limit);
    pinger.ping(PingSequence(0), &[0u8; 16]).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_or_refusing_host_is_up() {
        let spec = |port| ProbeSpec {
            tcp_port: port,
            timeout: Duration::from_millis(500),
        };
        // Loopback answers ICMP when it may be sent, else a TCP connect,
        // accepted or refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let v = probe("127.0.0.1".parse().unwrap(), spec(port)).await;
        assert!(v.reachable, "{v:?}");
        drop(listener);
        let v = probe("127.0.0.1".parse().unwrap(), spec(port)).await;
        assert!(v.reachable, "a refused connection is a live host: {v:?}");
        // A silent host is the namespace test's (tests/it/c11_probe.rs):
        // outside a namespace the test controls, who answers is the
        // machine's network's business.
    }
}

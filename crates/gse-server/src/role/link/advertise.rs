//! What a registering agent is told its parent is (A1 `parent_ip`), and so
//! where its DataServer is when that listens on a wildcard address.
//!
//! With `node.advertise_ip` unset, the answer is the address the agent
//! itself connected to: the link's local address. That is right on any
//! deployment where agents reach the node directly, needs no config, and
//! never hands a remote agent 127.0.0.1. A configured loopback address is
//! refused for an agent that is not on this host (it could not reach it):
//! it gets the link's local address instead, with one WARN per run.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// How one agent reached this node: what it is told as its parent IP, and
/// the address it connects from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentPath {
    /// The IP the agent is told this node (and a wildcard DataServer) has.
    pub parent_ip: IpAddr,
    /// Where the agent's connection comes from (after NAT, K7).
    pub peer_ip: IpAddr,
}

/// Chooses [`AgentPath::parent_ip`] per connection.
#[derive(Debug)]
pub struct Advertiser {
    /// `node.advertise_ip`, if configured.
    configured: Option<IpAddr>,
    /// A configured loopback address was refused to a remote agent (logged once).
    refused_loopback: AtomicBool,
}

impl Advertiser {
    pub fn new(configured: Option<IpAddr>) -> Advertiser {
        Advertiser {
            configured,
            refused_loopback: AtomicBool::new(false),
        }
    }

    /// The path of an agent connected from `peer` to our `local` address.
    pub fn path(&self, local: SocketAddr, peer: SocketAddr) -> AgentPath {
        let local_ip = local.ip().to_canonical();
        let peer_ip = peer.ip().to_canonical();
        let parent_ip = match self.configured {
            Some(ip) if ip.is_loopback() && !peer_ip.is_loopback() => {
                if !self.refused_loopback.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        advertise_ip = %ip,
                        agent = %peer_ip,
                        told = %local_ip,
                        "node.advertise_ip is a loopback address, which an agent on another host cannot reach; \
                         such agents are told the address they connected to instead. \
                         Unset node.advertise_ip or set it to an address agents reach"
                    );
                }
                local_ip
            }
            Some(ip) => ip,
            None => local_ip,
        };
        AgentPath { parent_ip, peer_ip }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unset_advertises_the_address_the_agent_connected_to() {
        let a = Advertiser::new(None);
        let p = a.path(addr("10.77.0.1:28668"), addr("10.77.0.11:40000"));
        assert_eq!(p.parent_ip.to_string(), "10.77.0.1");
        assert_eq!(p.peer_ip.to_string(), "10.77.0.11");
        // A dual-stack listener sees IPv4 agents as mapped addresses.
        let p = a.path(
            addr("[::ffff:10.77.0.1]:28668"),
            addr("[::ffff:10.77.0.12]:1"),
        );
        assert_eq!(p.parent_ip.to_string(), "10.77.0.1");
        assert_eq!(p.peer_ip.to_string(), "10.77.0.12");
    }

    #[test]
    fn a_configured_address_wins_unless_it_is_loopback_for_a_remote_agent() {
        let a = Advertiser::new(Some("192.0.2.7".parse().unwrap()));
        let p = a.path(addr("10.77.0.1:28668"), addr("10.77.0.11:4"));
        assert_eq!(p.parent_ip.to_string(), "192.0.2.7");

        let lo = Advertiser::new(Some("127.0.0.1".parse().unwrap()));
        let remote = lo.path(addr("10.77.0.1:28668"), addr("10.77.0.11:4"));
        assert_eq!(remote.parent_ip.to_string(), "10.77.0.1");
        let local = lo.path(addr("127.0.0.1:28668"), addr("127.0.0.1:4"));
        assert_eq!(local.parent_ip.to_string(), "127.0.0.1");
    }
}

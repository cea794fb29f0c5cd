//! Where agents are told to dial one DataServer (`RegisterAck.data_endpoint`,
//! `DataAssign.endpoint`).
//!
//! A DataServer on a wildcard address with no `data.advertise_host` is
//! reached at the address the agent already reached this node's link at
//! (its [`AgentPath::parent_ip`]): right for every agent without config,
//! where one fixed address would be right only for some. A DataServer bound
//! to a loopback address is never handed to an agent on another host: it
//! could not reach it, and its records would pile up unnoticed in its spool.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::DataConfig;
use crate::role::link::AgentPath;

/// How agents reach one DataServer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataEndpoint {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// `data.advertise_host`, told to everyone.
    Named(String),
    /// The specific address the DataServer is bound to.
    Bound(IpAddr),
    /// Wildcard listener: the agent's parent IP.
    Parent,
}

impl DataEndpoint {
    /// The endpoint of a DataServer bound at `bound`.
    pub fn new(config: &DataConfig, bound: SocketAddr) -> DataEndpoint {
        let host = match &config.advertise_host {
            Some(h) => Host::Named(h.clone()),
            None if bound.ip().is_unspecified() => Host::Parent,
            None => Host::Bound(bound.ip()),
        };
        DataEndpoint {
            host,
            port: bound.port(),
        }
    }

    /// `host:port` for an agent that reached the link over `path`; `None`
    /// when this DataServer listens only on loopback and the agent is
    /// remote.
    pub fn for_agent(&self, path: AgentPath) -> Option<String> {
        let ip = match &self.host {
            Host::Named(name) => return Some(join(name, self.port)),
            Host::Bound(ip) if ip.is_loopback() && !path.peer_ip.is_loopback() => return None,
            Host::Bound(ip) => *ip,
            Host::Parent => path.parent_ip,
        };
        Some(SocketAddr::new(ip, self.port).to_string())
    }

    /// `host:port` published for the agents of every node (D4 across
    /// nodes): `data.advertise_host`, the bound address, or for a wildcard
    /// listener `node_ip` (this node's advertised address). `None` when
    /// there is none, and for a loopback address unless `node_ip` is
    /// loopback too (a cluster on one host): another host's agent would
    /// dial its own host.
    pub fn advertised(&self, node_ip: Option<IpAddr>) -> Option<String> {
        let local_cluster = node_ip.is_some_and(|ip| ip.is_loopback());
        let ip = match &self.host {
            Host::Named(name) => return Some(join(name, self.port)),
            Host::Bound(ip) if ip.is_loopback() && !local_cluster => return None,
            Host::Bound(ip) => *ip,
            Host::Parent => node_ip.filter(|ip| !ip.is_unspecified())?,
        };
        Some(SocketAddr::new(ip, self.port).to_string())
    }
}

/// For logs: the host, or what it depends on.
impl fmt::Display for DataEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Named(name) => f.write_str(&join(name, self.port)),
            Host::Bound(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Parent => write!(
                f,
                "<the address each agent reached the link at>:{}",
                self.port
            ),
        }
    }
}

/// `host:port`, bracketing a bare IPv6 host.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parent: &str, peer: &str) -> AgentPath {
        AgentPath {
            parent_ip: parent.parse().unwrap(),
            peer_ip: peer.parse().unwrap(),
        }
    }

    #[test]
    fn endpoints_name_a_host_the_agent_reaches() {
        let cfg = DataConfig::default();
        let remote = path("10.77.0.1", "10.77.0.11");
        let local = path("127.0.0.1", "127.0.0.1");
        let wildcard = DataEndpoint::new(&cfg, "0.0.0.0:28625".parse().unwrap());
        assert_eq!(wildcard.for_agent(remote).unwrap(), "10.77.0.1:28625");
        assert_eq!(wildcard.for_agent(local).unwrap(), "127.0.0.1:28625");

        let v6 = DataEndpoint::new(&cfg, "[::]:5".parse().unwrap());
        assert_eq!(
            v6.for_agent(path("fd00::1", "fd00::2")).unwrap(),
            "[fd00::1]:5"
        );

        let lo = DataEndpoint::new(&cfg, "127.0.0.1:5".parse().unwrap());
        assert_eq!(lo.for_agent(local).unwrap(), "127.0.0.1:5");
        assert_eq!(
            lo.for_agent(remote),
            None,
            "loopback is not for remote agents"
        );

        let named = DataConfig {
            advertise_host: Some("data.example".into()),
            ..DataConfig::default()
        };
        let named = DataEndpoint::new(&named, "0.0.0.0:1".parse().unwrap());
        assert_eq!(named.for_agent(remote).unwrap(), "data.example:1");
        assert_eq!(named.to_string(), "data.example:1");
    }

    #[test]
    fn published_endpoints_are_never_wildcards() {
        let cfg = DataConfig::default();
        let node: IpAddr = "10.77.0.1".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let wildcard = DataEndpoint::new(&cfg, "0.0.0.0:28625".parse().unwrap());
        assert_eq!(wildcard.advertised(Some(node)).unwrap(), "10.77.0.1:28625");
        assert_eq!(wildcard.advertised(None), None);
        let bound = DataEndpoint::new(&cfg, "10.77.0.2:7".parse().unwrap());
        assert_eq!(bound.advertised(None).unwrap(), "10.77.0.2:7");
        let loopback = DataEndpoint::new(&cfg, "127.0.0.1:7".parse().unwrap());
        assert_eq!(loopback.advertised(Some(node)), None, "not for other hosts");
        assert_eq!(loopback.advertised(Some(lo)).unwrap(), "127.0.0.1:7");
    }
}

//! Where the data link dials, and who said so: the endpoint gse-server
//! assigned (`RegisterAck.data_endpoint`, `DataAssign`), or one of this
//! agent's own `[data] servers`. A failed connect names the origin, since
//! the fix differs: a wrong assigned address is fixed in the server's
//! config (it advertises it), a wrong configured one in the agent's.

use std::fmt::Display;

use gse_link::net_hint::{self, ConnectFailure};

/// An endpoint the node assigned, as the control link passes it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// `host:port` to dial (a wildcard host already replaced).
    pub endpoint: String,
    /// The control link's server (`host:port`) that assigned it.
    pub server: String,
}

/// An endpoint to dial and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub endpoint: String,
    /// The server that assigned it; `None` = from `[data] servers`.
    pub assigned_by: Option<String>,
}

// === impl Target ===

impl Target {
    pub fn assigned(a: &Assignment) -> Self {
        Target {
            endpoint: a.endpoint.clone(),
            assigned_by: Some(a.server.clone()),
        }
    }

    pub fn configured(endpoint: &str) -> Self {
        Target {
            endpoint: endpoint.to_string(),
            assigned_by: None,
        }
    }

    /// "data endpoint H:P (assigned by server S)" or "(from [data] servers)".
    pub fn describe(&self) -> String {
        match &self.assigned_by {
            Some(server) => format!(
                "data endpoint {} (assigned by server {server})",
                self.endpoint
            ),
            None => format!(
                "data endpoint {} (from [data] servers in this agent's config)",
                self.endpoint
            ),
        }
    }

    /// A TCP connect that failed as `failure` (`error` says how), in
    /// words: what, why, and what to check.
    pub fn connect_failed(&self, failure: ConnectFailure, error: impl Display) -> String {
        let unanswered = match self.assigned_by {
            Some(_) => "nothing accepts connections there",
            None => {
                "is a gse-server DataServer listening there? check [data] servers in this agent's config"
            }
        };
        let hint = net_hint::hint(failure, &self.endpoint, unanswered)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let origin = match self.assigned_by {
            Some(_) if failure != ConnectFailure::Other => {
                "; the server advertises this address: check node.advertise_ip / data.advertise_host in the server's config, and that its data.listen is reachable from this host"
            }
            _ => "",
        };
        format!(
            "{}: TCP connect failed: {error}{hint}{origin}",
            self.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned() -> Target {
        Target::assigned(&Assignment {
            endpoint: "127.0.0.1:28625".into(),
            server: "10.77.0.1:28668".into(),
        })
    }

    #[test]
    fn a_refused_assigned_endpoint_points_at_the_servers_advertise_keys() {
        let text = assigned().connect_failed(ConnectFailure::Unanswered, "Connection refused");
        assert!(
            text.starts_with(
                "data endpoint 127.0.0.1:28625 (assigned by server 10.77.0.1:28668): TCP connect failed: Connection refused"
            ),
            "{text}"
        );
        assert!(
            text.contains("node.advertise_ip / data.advertise_host in the server's config"),
            "{text}"
        );
        assert!(!text.contains("[data] servers"), "{text}");
    }

    #[test]
    fn an_unroutable_assigned_endpoint_says_route_and_origin() {
        let text = assigned().connect_failed(ConnectFailure::NoRoute, "No route to host");
        assert!(text.contains("no route to 127.0.0.1"), "{text}");
        assert!(text.contains("data.advertise_host"), "{text}");
    }

    #[test]
    fn a_configured_endpoint_points_at_the_agents_own_config() {
        let t = Target::configured("10.0.0.9:28625");
        let text = t.connect_failed(ConnectFailure::Unanswered, "Connection refused");
        assert!(
            text.starts_with("data endpoint 10.0.0.9:28625 (from [data] servers"),
            "{text}"
        );
        assert!(text.contains("check [data] servers"), "{text}");
        assert!(!text.contains("advertise"), "{text}");
        let other = t.connect_failed(ConnectFailure::Other, "Too many open files");
        assert!(
            other.ends_with("TCP connect failed: Too many open files"),
            "{other}"
        );
    }
}

//! What to check when a TCP connect fails, said the same way by every link
//! that dials ([`crate::dial`]): the agent's control link, its data link and
//! its P2P client.
//!
//! [`classify`] sorts the error: nothing answered at the address (refused,
//! timed out: is the service running there, is it the right address?), or
//! this host has no route to it (network or host unreachable: a routing or
//! firewall matter, not the server's). [`hint`] gives the advice for each,
//! with the caller's own words for the "nothing answered" case; other
//! errors get none, since a guess would mislead.

use std::io;
use std::net::IpAddr;

/// How a TCP connect failed, as far as advice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing accepted the connection: refused, or no answer in time.
    Unanswered,
    /// This host has no route to the address (network or host unreachable).
    NoRoute,
    /// Anything else (bind, resources, ...): no advice.
    Other,
}

/// Sorts a connect error.
pub fn classify(e: &io::Error) -> ConnectFailure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut => ConnectFailure::Unanswered,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            ConnectFailure::NoRoute
        }
        _ => ConnectFailure::Other,
    }
}

/// The advice for a connect to `addr` (`host:port`) that failed as
/// `failure`; `unanswered` is what to check when nothing answered there.
pub fn hint(failure: ConnectFailure, addr: &str, unanswered: &str) -> Option<String> {
    match failure {
        ConnectFailure::Unanswered => Some(unanswered.to_string()),
        ConnectFailure::NoRoute => {
            let host = host_of(addr);
            Some(format!(
                "this host has no route to {host}: check the route and firewall to that address (`ip route get {host}`)"
            ))
        }
        ConnectFailure::Other => None,
    }
}

/// "TCP connect to ADDR failed: ERROR (HINT)": the control link's wording.
pub fn connect_failed(addr: &str, e: &io::Error, unanswered: &str) -> String {
    match hint(classify(e), addr, unanswered) {
        Some(h) => format!("TCP connect to {addr} failed: {e} ({h})"),
        None => format!("TCP connect to {addr} failed: {e}"),
    }
}

/// The host part of `host:port` (`[v6]:port` gives the bare address).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        bare
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "is gse-server running and link.listen reachable?";

    fn err(kind: io::ErrorKind) -> io::Error {
        io::Error::from(kind)
    }

    #[test]
    fn refusals_and_timeouts_ask_about_the_service() {
        for kind in [io::ErrorKind::ConnectionRefused, io::ErrorKind::TimedOut] {
            assert_eq!(classify(&err(kind)), ConnectFailure::Unanswered);
            let text = connect_failed("10.0.0.1:28668", &err(kind), SERVER);
            assert!(text.ends_with(&format!("({SERVER})")), "{text}");
        }
    }

    #[test]
    fn unreachable_networks_and_hosts_ask_about_the_route() {
        for raw in [nix::libc::ENETUNREACH, nix::libc::EHOSTUNREACH] {
            let e = io::Error::from_raw_os_error(raw);
            assert_eq!(classify(&e), ConnectFailure::NoRoute, "{e}");
            let text = connect_failed("10.77.0.1:28668", &e, SERVER);
            assert!(!text.contains("gse-server running"), "{text}");
            assert!(
                text.contains("no route to 10.77.0.1") && text.contains("ip route get 10.77.0.1"),
                "{text}"
            );
        }
        let v6 = hint(ConnectFailure::NoRoute, "[fd00::1]:28668", SERVER).unwrap();
        assert!(v6.contains("ip route get fd00::1"), "{v6}");
    }

    #[test]
    fn other_errors_get_no_guess() {
        let e = io::Error::from_raw_os_error(nix::libc::EADDRNOTAVAIL);
        assert_eq!(classify(&e), ConnectFailure::Other);
        let text = connect_failed("h:1", &e, SERVER);
        assert_eq!(text, format!("TCP connect to h:1 failed: {e}"));
    }
}

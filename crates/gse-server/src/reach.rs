//! Who can reach this node as configured: what `check-config` and `run` say
//! about the addresses agents and API clients on other hosts are given.
//!
//! On 127.0.0.x everything reaches everything, so a loopback address in the
//! wrong key only shows on a real deployment, and there quietly (records
//! piling up in agents' spools while tasks work). These notes name the key,
//! its value and what to change, before anything is deployed.

use std::net::SocketAddr;

use crate::config::ServerConfig;

/// One finding: a warning (a deployment that will not work for remote
/// agents or clients) or a note (how a default resolves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    Warning(String),
    Note(String),
}

/// What `config` gives agents and clients on other hosts.
pub fn findings(config: &ServerConfig) -> Vec<Reach> {
    let mut out = Vec::new();
    let link = config.link.listen;
    // Agents come from other hosts unless the link itself is loopback-only.
    let remote_agents = !link.ip().is_loopback();
    match config.node.advertise_ip {
        Some(ip) if ip.is_loopback() && remote_agents => out.push(Reach::Warning(format!(
            "node.advertise_ip = \"{ip}\" is loopback, but link.listen = \"{link}\" takes agents from other hosts: \
             they cannot reach {ip}, so they are told the address they connected to instead. \
             Remove node.advertise_ip, or set it to the address agents reach this host at"
        ))),
        Some(_) => {}
        None => out.push(Reach::Note(format!(
            "node.advertise_ip is unset: each agent is told the address it connected to (link.listen = \"{link}\") \
             as its parent_ip{}",
            if has_wildcard_data(config) {
                " and as its DataServer host"
            } else {
                ""
            }
        ))),
    }
    if remote_agents && config.data.advertise_host.is_none() {
        for addr in config.data.listen.iter().filter(|a| a.ip().is_loopback()) {
            out.push(Reach::Warning(format!(
                "data.listen has \"{addr}\", a loopback address: agents on other hosts are not given this DataServer \
                 and keep their records in their spools. Listen on 0.0.0.0 or an address agents reach"
            )));
        }
    }
    let api = config.api.listen;
    if api.ip().is_loopback() {
        out.push(Reach::Note(format!(
            "api.listen = \"{api}\" is loopback: only clients on this host (gsectl, a gateway) reach the API. \
             For bk-job or bk-nodeman on other hosts, set it to an address they reach (behind a firewall or gateway)"
        )));
    }
    out
}

fn has_wildcard_data(config: &ServerConfig) -> bool {
    config.data.advertise_host.is_none()
        && config
            .data
            .listen
            .iter()
            .any(|a: &SocketAddr| a.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ServerConfig {
        let text = format!(
            "[node]\ndata_dir = \"/tmp/x\"\n{extra}\n[tls]\nca_file = \"a\"\ncert_file = \"b\"\nkey_file = \"c\"\n"
        );
        let mut c = ServerConfig::from_toml(&text).unwrap();
        c.resolve();
        c
    }

    fn warnings(c: &ServerConfig) -> Vec<String> {
        findings(c)
            .into_iter()
            .filter_map(|f| match f {
                Reach::Warning(w) => Some(w),
                Reach::Note(_) => None,
            })
            .collect()
    }

    #[test]
    fn the_shipped_defaults_warn_about_nothing() {
        let c = config("");
        assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
        assert!(findings(&c).iter().any(
            |f| matches!(f, Reach::Note(n) if n.contains("told the address it connected to"))
        ));
    }

    #[test]
    fn loopback_advertised_to_remote_agents_is_a_warning() {
        let c = config("advertise_ip = \"127.0.0.1\"");
        let w = warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("node.advertise_ip = \"127.0.0.1\""), "{w:?}");
        let c = config("advertise_ip = \"127.0.0.1\"\n[link]\nlisten = \"127.0.0.1:1\"");
        assert!(
            warnings(&c).is_empty(),
            "a loopback-only link has no remote agents"
        );
    }

    #[test]
    fn a_loopback_data_server_is_a_warning() {
        let c = config("[data]\nlisten = [\"127.0.0.1:28625\", \"0.0.0.0:28626\"]");
        let w = warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("127.0.0.1:28625"), "{w:?}");
    }
}

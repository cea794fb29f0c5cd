//! Issue 10, item 2: a server certificate that does not carry the name an
//! agent connects with is a name mismatch, not a CA mismatch, and both
//! sides say so: the agent names the name it expected and the names the
//! certificate carries; the server names the name the agent asked for
//! (its SNI) and its own certificate's names, and blames the CA only when
//! that fits what it saw.

use std::sync::Arc;
use std::time::Duration;

use gse_testkit::{AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc, eventually};

/// The names `Cluster`'s server certificate carries (`certs init` defaults).
const CERT_NAMES: &str = "gse-server, localhost, 127.0.0.1";

/// A real agent at `ip` whose `upstream.server_name` is `name`.
fn agent_expecting(cluster: &Cluster, server: &ServerProc, ip: &str, name: &str) -> AgentProc {
    let name = name.to_string();
    let mut opts = AgentOptions::ip(ip);
    opts.customize = Some(Arc::new(move |cfg| {
        cfg.upstream.server_name = name.clone();
    }));
    cluster.agent(server, opts)
}

/// Waits for a line of `log()` that contains every one of `needles`; the
/// line.
async fn line_with(what: &str, log: impl Fn() -> String, needles: &[&str]) -> String {
    eventually(what, Duration::from_secs(20), || async {
        let text = log();
        text.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .ok_or(text)
    })
    .await
}

#[tokio::test]
async fn r10_2_name_mismatch_names_expected_and_presented() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let agent = agent_expecting(&cluster, &server, "127.0.0.51", "gse.example.org");

    let line = line_with(
        "the agent names both names",
        || agent.log(),
        &["gse.example.org", CERT_NAMES, "upstream"],
    )
    .await;
    assert!(line.contains("server_name"), "says what to set: {line}");
    assert!(
        line.contains("--server-name gse.example.org"),
        "says how to re-issue: {line}"
    );

    let line = line_with(
        "the server names both names",
        || server.log(),
        &["gse.example.org", CERT_NAMES],
    )
    .await;
    assert!(line.contains("server_name"), "says what to set: {line}");
    assert!(!line.contains("another CA"), "not a CA problem: {line}");
}

#[tokio::test]
async fn r10_2_an_ip_name_the_certificate_lacks_lists_both_causes_on_the_server() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    // An IP name: the agent sends no SNI, so the server cannot see it.
    let agent = agent_expecting(&cluster, &server, "127.0.0.52", "127.0.0.9");

    line_with(
        "the agent names both names",
        || agent.log(),
        &["127.0.0.9", CERT_NAMES, "upstream"],
    )
    .await;
    let line = line_with(
        "the server gives both causes",
        || server.log(),
        &["sent no name", CERT_NAMES, "another CA"],
    )
    .await;
    assert!(line.contains("server_name"), "says what to set: {line}");
    assert!(line.contains("likely"), "a guess, worded as one: {line}");
}

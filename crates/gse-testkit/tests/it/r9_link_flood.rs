//! Issue 9 item 2, the agent-facing listeners: connections that never
//! finish their TLS handshake and Register (DataHello) are capped in all
//! and per address, so unauthenticated peers cannot take the server's
//! descriptors from the API and from agents. Every flood is a
//! `gse-hostile hold-connections` process holding TCP connections that
//! send the first bytes of a TLS ClientHello and never the rest, against a server whose open-files limit is lowered
//! to 256 and whose handshake timeouts are 300 s (so nothing is freed by
//! a timeout while the test looks).

use std::sync::Arc;
use std::time::Duration;

use gse_server::config::ServerConfig;
use gse_testkit::hostile::hold::Background;
use gse_testkit::{AgentOptions, Cluster, ServerOptions, ServerProc, eventually};
use serde_json::Value;

use crate::r9_http::{hold, request};

/// A server with 256 open files and handshakes that may take 300 s.
fn flood_target() -> ServerOptions {
    ServerOptions {
        open_files_limit: Some(256),
        customize: Some(Arc::new(|c: &mut ServerConfig| {
            c.link.handshake_timeout = Duration::from_secs(300);
            c.data.handshake_timeout = Duration::from_secs(300);
        })),
        ..ServerOptions::default()
    }
}

/// Holds `count` connections to `addr` from `binds` in turn, each with a
/// ClientHello begun and never finished (data, unlike silence, always
/// reaches the server even when SYN cookies are in use); the
/// "opened" summary once `until_closed` of them were closed by the server
/// (at most 15 s).
async fn flood(
    addr: String,
    binds: &[String],
    count: usize,
    until_closed: usize,
) -> (Background, Value) {
    let until = until_closed.to_string();
    let mut extra = vec![
        "--send",
        "tls-hello-start",
        "--watch-secs",
        "300",
        "--until-closed",
        &until,
        "--max-wait-ms",
        "15000",
    ];
    for b in &binds[1..] {
        extra.extend(["--bind", b.as_str()]);
    }
    hold(addr, &binds[0], count, &extra).await
}

/// The address of the server's (only) DataServer, from its log.
fn data_addr(server: &ServerProc) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("DataServer listening"))
        .expect("the DataServer logged its endpoint");
    line.split("endpoint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("endpoint=HOST:PORT")
        .to_string()
}

fn lines_with(server: &ServerProc, needle: &str) -> usize {
    server.log().lines().filter(|l| l.contains(needle)).count()
}

/// `/healthz` answers 200 on a new connection (the test's own client may
/// hold a pooled one, which proves nothing about accepting).
async fn healthz_answers(server: &ServerProc) {
    eventually("the API answers", Duration::from_secs(20), || async {
        let v = request(server, "127.0.0.3", "/healthz", &["--method", "GET"]).await;
        (v["status"] == 200).then_some(()).ok_or(v.to_string())
    })
    .await;
}

async fn registered(server: &ServerProc, ip: &str, within: Duration) {
    eventually(
        &format!("agent {ip} registered with its data link up"),
        within,
        || async {
            let log = server.log();
            let up = |what: &str| log.lines().any(|l| l.contains(what) && l.contains(ip));
            let (reg, data) = (up("agent registered"), up("data link up"));
            (reg && data)
                .then_some(())
                .ok_or(format!("registered {reg}, data link {data}"))
        },
    )
    .await;
}

fn open(v: &Value) -> u64 {
    v["open"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn r9_2_one_address_holding_link_handshakes_keeps_no_agent_out() {
    let cluster = Cluster::new();
    let server = cluster.server(flood_target()).await;
    // 400 unfinished handshakes from one address: more than the server's 256
    // descriptors. Those over the per-address cap are closed at once.
    let binds = ["127.0.0.31".to_string()];
    let (holder, opened) = flood(server.link_addr.to_string(), &binds, 400, 368).await;

    // A new agent from another address registers promptly, and the API
    // answers, while the holder keeps what it was given.
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.2.31"));
    registered(&server, "127.0.2.31", Duration::from_secs(30)).await;
    healthz_answers(&server).await;
    assert!(
        open(&opened) <= 32,
        "one address holds a small share of the handshakes: {opened}"
    );
    assert!(
        lines_with(&server, "(config link.max_pending_handshakes_per_ip)") >= 1,
        "refusals name the key"
    );
    assert_eq!(lines_with(&server, "Too many open files"), 0);
    drop((holder, agent));
}

#[tokio::test]
async fn r9_2_link_and_data_floods_from_many_addresses_exhaust_no_descriptors() {
    let cluster = Cluster::new();
    let server = cluster.server(flood_target()).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.2.32"));
    registered(&server, "127.0.2.32", Duration::from_secs(30)).await;

    // 400 unfinished handshakes to the agent link and 200 to the DataServer,
    // each from 20 addresses: the per-address caps alone would let them
    // hold 80 each. Those over the global caps (an eighth of the 256
    // descriptors each, so the API and registered agents keep the rest)
    // are closed at once: nothing waits in the accept backlog for a
    // descriptor.
    let link_binds: Vec<String> = (0..20).map(|i| format!("127.0.3.{i}")).collect();
    let data_binds: Vec<String> = (0..20).map(|i| format!("127.0.4.{i}")).collect();
    let (link_flood, link_opened) =
        flood(server.link_addr.to_string(), &link_binds, 400, 368).await;
    let (data_flood, data_opened) = flood(data_addr(&server), &data_binds, 200, 168).await;
    // The API answers, the registered agent stays, no accept ran out of
    // descriptors.
    healthz_answers(&server).await;
    assert_eq!(server.api.alive(0, "127.0.2.32").await, 1);
    for (what, v) in [("agent link", &link_opened), ("DataServer", &data_opened)] {
        assert!(open(v) <= 32, "{what}: pending handshakes are capped: {v}");
    }
    assert!(lines_with(&server, "(config link.max_pending_handshakes") >= 1);
    assert!(lines_with(&server, "(config data.max_pending_handshakes") >= 1);
    assert_eq!(
        lines_with(&server, "Too many open files"),
        0,
        "{}",
        server.log()
    );

    // Once the flood stops, a new agent registers.
    drop((link_flood, data_flood));
    let late = cluster.agent(&server, AgentOptions::ip("127.0.2.33"));
    registered(&server, "127.0.2.33", Duration::from_secs(30)).await;
    drop((agent, late));
}

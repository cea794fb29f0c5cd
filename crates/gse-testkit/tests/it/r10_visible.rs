//! Issue 10, items 5 and 6 (and the agent's half of item 1): what an agent
//! advertises and why things fail must be visible to the operator.
//!
//! - the P2P address an agent advertises shows in its log and in
//!   `check-config`; a target that falls back to direct transfer says why
//!   in its result and in `gsectl push`'s summary; `gsectl agents` shows the
//!   address a NAT'd agent connects from;
//! - connect errors carry a hint that fits the error (route vs. server);
//!   logs on a pipe carry no colour codes; the data link dials a newly
//!   assigned endpoint at once instead of finishing its back-off, and its
//!   error says when the endpoint came from the server.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_agent::AgentConfig;
use gse_core::certs::CertKind;
use gse_server::config::ServerConfig;
use gse_testkit::{
    AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc, bin, eventually, free_port,
};
use serde_json::json;

use crate::f_files::{download_of, noise, results, setup, start, task, wait_final, write_file};

/// `gsectl` against `server`'s API with `args`; (success, stdout, stderr).
fn gsectl(server: &ServerProc, args: &[&str]) -> (bool, String, String) {
    let api = &server.api;
    let out = api.gsectl().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `agent`'s log has a line with every one of `needles`;
/// returns that line.
async fn log_line(agent: &AgentProc, what: &str, needles: &[&str], within: Duration) -> String {
    let line = eventually(what, within, || async {
        let log = agent.log();
        log.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .ok_or_else(|| format!("no line with {needles:?}; log tail:\n{}", tail(&log)))
    })
    .await;
    eprintln!("{what}: {line}");
    line
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

// === item 5: what is advertised is visible ===

#[tokio::test]
async fn r10_5_p2p_fallback_reason_reaches_the_result_and_the_push_summary() {
    // The source advertises a P2P address nobody listens on: its target
    // cannot reach it and must fetch direct through the server, and say so.
    let dead: SocketAddr = format!("127.0.10.99:{}", free_port()).parse().unwrap();
    let mut source = AgentOptions::ip("127.0.10.1");
    source.customize = Some(Arc::new(move |c: &mut AgentConfig| {
        c.file.p2p_advertise = dead.to_string();
    }));
    let s = setup(
        ServerOptions::default(),
        vec![source, AgentOptions::ip("127.0.10.2")],
    )
    .await;
    // The listener's log line names the advertised address, not only the
    // bound one.
    let line = log_line(
        &s.agents[0],
        "the P2P listener's log line",
        &["P2P listener ready"],
        Duration::from_secs(10),
    )
    .await;
    assert!(line.contains(&dead.to_string()), "{line}");

    let src = s.cluster.path.join("src/big.bin");
    let content = noise(1 << 20, 51);
    write_file(&src, &content, 0o644);
    let dst = s.cluster.path.join("dst");
    let from = format!("0:127.0.10.1:{}", src.display());
    let to = format!("0:127.0.10.2:{}", dst.display());
    let (ok, stdout, stderr) = gsectl(&s.server, &["push", "--from", &from, "--to", &to]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    eprintln!("gsectl push:\n{stdout}");
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), content);
    // The summary says the target went direct, and why: the dead address.
    let why = stdout
        .lines()
        .find(|l| l.contains("direct") && l.contains(&dead.to_string()))
        .unwrap_or_else(|| panic!("no fallback reason naming {dead} in:\n{stdout}"));
    assert!(why.contains("0:127.0.10.2"), "{why}");
    assert!(why.to_lowercase().contains("refused"), "{why}");

    // The transfer status API carries it on the target's entry.
    let (_, v) = s
        .server
        .api
        .post(
            "/api/v2/task/extensions/get_transfer_file_result",
            json!({"task_id": task_id_in(&stderr)}),
        )
        .await;
    let all = v["data"]["result"].as_array().cloned().unwrap_or_default();
    let d = download_of(&all, "0:127.0.10.2");
    let reason = d["content"]["p2p_fallback"].as_str().unwrap_or_default();
    assert!(reason.contains(&dead.to_string()), "{d:#}");
    let info = d["content"]["status_info"].as_str().unwrap_or_default();
    assert!(info.contains(&dead.to_string()), "{d:#}");
    assert!(d["content"]["bytes_direct"].as_u64().unwrap() > 0, "{d:#}");
}

/// The task id in `gsectl push`'s plain progress lines ("<id>: ...").
fn task_id_in(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.starts_with("GSETASK:"))
        .find_map(|l| l.split_once(": ").map(|(id, _)| id.to_string()))
        .unwrap_or_else(|| panic!("no task id in gsectl's progress:\n{stderr}"))
}

#[tokio::test]
async fn r10_5_p2p_fallback_without_a_source_address_is_explained() {
    // A source without a P2P listener: the API entry says so.
    let mut source = AgentOptions::ip("127.0.10.11");
    source.p2p = false;
    let s = setup(
        ServerOptions::default(),
        vec![source, AgentOptions::ip("127.0.10.12")],
    )
    .await;
    let src = s.cluster.path.join("src");
    write_file(&src.join("c.bin"), &noise(256 << 10, 52), 0o644);
    let dst = s.cluster.path.join("dst");
    let api = &s.server.api;
    let id = start(
        api,
        vec![task(
            "0:127.0.10.11",
            &src,
            "c.bin",
            &["0:127.0.10.12"],
            &dst,
        )],
        json!({}),
    )
    .await;
    let done = wait_final(api, &id, 2, Duration::from_secs(60)).await;
    let d = download_of(&done, "0:127.0.10.12");
    assert_eq!(d["error_code"], 0, "{d:#}");
    let reason = d["content"]["p2p_fallback"].as_str().unwrap_or_default();
    assert!(
        reason.contains("0:127.0.10.11") && reason.contains("no P2P address"),
        "{d:#}"
    );
    // Polling again gives the same (it is kept, not a one-off).
    let again = results(api, &id).await;
    assert_eq!(
        download_of(&again, "0:127.0.10.12")["content"]["p2p_fallback"],
        d["content"]["p2p_fallback"]
    );
}

#[tokio::test]
async fn r10_5_check_config_shows_the_advertised_p2p_address() {
    let cluster = Cluster::new();
    let dir = cluster.path.join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let check = |edit: &dyn Fn(&mut AgentConfig)| {
        let mut cfg = AgentConfig::new(
            dir.join("agent"),
            vec!["127.0.0.1:1".into()],
            cluster.tls(CertKind::Agent),
        );
        edit(&mut cfg);
        let path = dir.join("agent.toml");
        std::fs::write(&path, cfg.to_toml()).unwrap();
        let out = Command::new(bin("gse-agent"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{out:?}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("p2p_advertised:"))
            .unwrap_or_else(|| panic!("no p2p_advertised line in:\n{stdout}"))
            .to_string();
        eprintln!("check-config: {line}");
        line
    };
    // Wildcard listen, nothing to advertise: the identity IP and the port.
    let line = check(&|c| c.agent.identity_ip = Some("10.9.8.7".parse().unwrap()));
    assert!(line.contains("10.9.8.7:20020"), "{line}");
    // No identity IP either: the address the agent connects from.
    let line = check(&|_| {});
    assert!(
        line.contains(":20020") && line.contains("identity"),
        "{line}"
    );
    // p2p_advertise wins, with the listener's port when it names none.
    let line = check(&|c| c.file.p2p_advertise = "192.0.2.5".into());
    assert!(line.contains("192.0.2.5:20020"), "{line}");
    let line = check(&|c| c.file.p2p_listen = None);
    assert!(line.contains("none"), "{line}");
}

#[tokio::test]
async fn r10_5_gsectl_agents_shows_the_address_a_natd_agent_connects_from() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let mut natd = AgentOptions::ip("10.77.5.5");
    natd.bind_ip = Some("127.0.10.21".parse().unwrap());
    let _natd = cluster.agent(&server, natd);
    let _plain = cluster.agent(&server, AgentOptions::ip("127.0.10.22"));
    server.api.wait_alive("10.77.5.5").await;
    server.api.wait_alive("127.0.10.22").await;
    let (ok, stdout, stderr) = gsectl(&server, &["agents"]);
    assert!(ok, "{stdout}{stderr}");
    let header = stdout.lines().next().unwrap_or_default();
    assert!(header.contains("PEER IP"), "{stdout}");
    let natd = stdout
        .lines()
        .find(|l| l.starts_with("0:10.77.5.5"))
        .unwrap_or_else(|| panic!("no NAT'd agent in\n{stdout}"));
    assert!(natd.contains("127.0.10.21"), "{stdout}");
    let plain = stdout
        .lines()
        .find(|l| l.starts_with("0:127.0.10.22"))
        .unwrap_or_else(|| panic!("no plain agent in\n{stdout}"));
    // Its peer IP is its identity: shown once, not twice.
    assert_eq!(plain.matches("127.0.10.22").count(), 1, "{stdout}");
}

// === item 6 and item 1 (agent half) ===

#[tokio::test]
async fn r10_6_connect_hints_fit_the_error() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    // Nothing listens at the upstream address: the hint asks about the server.
    let nobody = format!("127.0.0.1:{}", free_port());
    let mut refused = AgentOptions::ip("127.0.10.31");
    let upstream = nobody.clone();
    refused.customize = Some(Arc::new(move |c: &mut AgentConfig| {
        c.upstream.servers = vec![upstream.clone()];
    }));
    let refused = cluster.agent(&server, refused);
    let line = log_line(
        &refused,
        "a refused connect",
        &["cannot connect", &nobody],
        Duration::from_secs(15),
    )
    .await;
    assert!(line.contains("is gse-server running"), "{line}");

    // No network at all (a namespace of its own, loopback down): the hint
    // is about the route, not about gse-server.
    let mut isolated = AgentOptions::ip("10.77.6.1");
    isolated.launcher = vec!["unshare".into(), "--net".into(), "--".into()];
    let isolated = cluster.agent(&server, isolated);
    let line = log_line(
        &isolated,
        "an unreachable network",
        &["cannot connect", "unreachable"],
        Duration::from_secs(15),
    )
    .await;
    assert!(line.contains("route"), "{line}");
    assert!(!line.contains("is gse-server running"), "{line}");
}

#[tokio::test]
async fn r10_6_agent_log_on_a_pipe_has_no_colour_codes() {
    let cluster = Cluster::new();
    let dir = cluster.path.join("agent");
    let mut cfg = AgentConfig::new(
        dir.join("data"),
        vec![format!("127.0.0.1:{}", free_port())],
        cluster.tls(CertKind::Agent),
    );
    cfg.agent.identity_ip = Some("127.0.10.41".parse().unwrap());
    cfg.file.p2p_listen = None;
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    // No --log-file: logs go to stderr, here a pipe.
    let mut child = Command::new(bin("gse-agent"))
        .arg("--config")
        .arg(&path)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Read until it logs a failed connect (its start-up lines come first).
    let deadline = Instant::now() + gse_testkit::patience(Duration::from_secs(15));
    let mut text = String::new();
    while !text.contains("cannot connect") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => text.push_str(&format!("{line}\n")),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("cannot connect"),
        "no failed connect logged: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes on a pipe:\n{text:?}"
    );
}

/// A server whose data endpoint is advertised at an address nobody
/// listens on (`data.advertise_host`), as a wrong advertise IP would.
async fn server_advertising_a_dead_data_host(cluster: &Cluster) -> ServerProc {
    let opts = ServerOptions {
        customize: Some(Arc::new(|c: &mut ServerConfig| {
            c.data.advertise_host = Some("127.0.10.77".into());
        })),
        ..ServerOptions::default()
    };
    cluster.server(opts).await
}

#[tokio::test]
async fn r10_1_agent_says_a_refused_data_endpoint_came_from_the_server() {
    let cluster = Cluster::new();
    let server = server_advertising_a_dead_data_host(&cluster).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.10.51"));
    let line = log_line(
        &agent,
        "the data link's error",
        &["data link", "127.0.10.77:"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        line.contains(&format!("assigned by server {}", server.link_addr)),
        "{line}"
    );
    assert!(line.contains("data.advertise_host"), "{line}");
    assert!(line.contains("node.advertise_ip"), "{line}");
}

#[tokio::test]
async fn r10_6_data_link_dials_a_newly_assigned_endpoint_at_once() {
    let cluster = Cluster::new();
    let mut server = server_advertising_a_dead_data_host(&cluster).await;
    let mut opts = AgentOptions::ip("127.0.10.61");
    opts.customize = Some(Arc::new(|c: &mut AgentConfig| {
        c.upstream.backoff_initial = Duration::from_secs(1);
        c.upstream.backoff_max = Duration::from_secs(60);
    }));
    let agent = cluster.agent(&server, opts);
    // Let the data link's back-off grow past 10 s on the dead endpoint.
    let line = eventually(
        "the data link backing off for 10 s or more",
        Duration::from_secs(60),
        || async {
            let log = agent.log();
            log.lines()
                .filter(|l| l.contains("cannot open the data link"))
                .find(|l| retry_in(l).is_some_and(|d| d >= Duration::from_secs(10)))
                .map(str::to_string)
                .ok_or_else(|| tail(&log))
        },
    )
    .await;
    assert!(!agent.log().contains("data link up"), "{line}");
    // The operator fixes the advertised address and restarts the server.
    let mut cfg = ServerConfig::load(&server.config_path).unwrap();
    cfg.data.advertise_host = None;
    std::fs::write(&server.config_path, cfg.to_toml()).unwrap();
    server.restart().await;
    let registered = |n: usize| {
        let agent = &agent;
        move || async move {
            let count = agent.log().matches("connected and registered").count();
            (count >= n)
                .then_some(())
                .ok_or(format!("{count} registrations"))
        }
    };
    eventually(
        "the agent registered again",
        Duration::from_secs(20),
        registered(2),
    )
    .await;
    let again = Instant::now();
    // Well before the back-off it was in (10 s or more) ends.
    eventually("the data link up", Duration::from_secs(4), || async {
        agent
            .log()
            .contains("data link up")
            .then_some(())
            .ok_or_else(|| tail(&agent.log()))
    })
    .await;
    eprintln!("data link up {:?} after the registration", again.elapsed());
}

/// The `retry_in` of a "cannot open the data link" line.
fn retry_in(line: &str) -> Option<Duration> {
    let text = line.split("retry_in=").nth(1)?.split_whitespace().next()?;
    let secs: f64 = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1000.0
    } else {
        text.strip_suffix('s')?.parse().ok()?
    };
    Some(Duration::from_secs_f64(secs))
}

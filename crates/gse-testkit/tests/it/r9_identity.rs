//! Issue 9 item 3: one host cannot take another's identity. With the shared
//! agent certificate an identity is pinned to the first agent id that
//! claimed it (and stays pinned across restarts until an operator releases
//! it); a per-agent certificate names the one identity it may claim;
//! certificates carry a role, so a server or API-client certificate cannot
//! register as an agent, nor an agent certificate act as the server. Item
//! 10 (part): self-signed and X.509 v1 certificates are refused in words on
//! both sides.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gse_core::certs::CertKind;
use gse_core::tls::TlsFiles;
use gse_testkit::bad_tls::{self, OddCert};
use gse_testkit::{AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc, bin, eventually};
use serde_json::json;

use crate::task_api::{start, wait_final};

mod agent_id_pins;

const PATIENCE: Duration = Duration::from_secs(20);

/// An agent with its own directory (its own "host"), claiming `ip`.
fn host(ip: &str, name: &str) -> AgentOptions {
    AgentOptions {
        name: Some(name.into()),
        ..AgentOptions::ip(ip)
    }
}

fn with_tls(ip: &str, tls: TlsFiles) -> AgentOptions {
    AgentOptions {
        tls: Some(tls),
        ..AgentOptions::ip(ip)
    }
}

/// The real agent id holding `key` while it is alive.
async fn holder(server: &ServerProc, key: &str) -> Option<String> {
    let (_, v) = server
        .api
        .post("/api/v2/cluster/list_agents", json!({"alive_only": true}))
        .await;
    let agents = v["data"]["agents"].as_array()?;
    agents
        .iter()
        .find(|a| a["agent_key"] == key)
        .and_then(|a| a["bk_agent_id"].as_str().map(str::to_string))
}

async fn wait_holder(server: &ServerProc, key: &str, id: &str) {
    eventually(&format!("{key} held by {id}"), PATIENCE, || async {
        let now = holder(server, key).await;
        (now.as_deref() == Some(id))
            .then_some(())
            .ok_or(format!("{now:?}"))
    })
    .await;
}

/// Waits for one line of a log holding every needle.
async fn log_has(what: &str, log: impl Fn() -> String, needles: &[&str]) {
    eventually(
        &format!("a {what} line with {needles:?}"),
        PATIENCE,
        || async {
            let text = log();
            (count(&text, needles) > 0)
                .then_some(())
                .ok_or_else(|| tail(&text))
        },
    )
    .await;
}

/// Lines of `log` holding every needle.
fn count(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

async fn agent_log_has(agent: &AgentProc, needles: &[&str]) {
    log_has("agent log", || agent.log(), needles).await;
}

async fn server_log_has(server: &ServerProc, needles: &[&str]) {
    log_has("server log", || server.log(), needles).await;
}

async fn wait_agent_id(agent: &AgentProc) -> String {
    eventually("agent id written", PATIENCE, || async {
        agent.agent_id().ok_or_else(String::new)
    })
    .await
}

fn gse_server(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("gse-server"))
        .args(args)
        .output()
        .expect("run gse-server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn r9_3_a_second_agent_id_cannot_take_a_pinned_identity_until_released() {
    const IP: &str = "127.0.0.61";
    const KEY: &str = "0:127.0.0.61";
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let mut a = cluster.agent(&server, host(IP, "host-a"));
    let id_a = wait_agent_id(&a).await;
    wait_holder(&server, KEY, &id_a).await;

    // Host B holds the same shared certificate and claims the same identity.
    let mut b = cluster.agent(&server, host(IP, "host-b"));
    let id_b = wait_agent_id(&b).await;
    assert_ne!(id_a, id_b);
    let pinned = format!("is pinned to agent id {id_a}");
    server_log_has(&server, &[&pinned, &id_b]).await;
    agent_log_has(&b, &["refused our registration", &pinned]).await;
    eventually("identity_conflict alarm", PATIENCE, || async {
        let alarms = server.alarms();
        alarms
            .iter()
            .any(|a| {
                a["kind"] == "identity_conflict" && a["agent"] == KEY && a["bk_agent_id"] == id_b
            })
            .then_some(())
            .ok_or(format!("{alarms:?}"))
    })
    .await;

    // Every task meant for the host runs on A, while B keeps trying.
    let tasks: Vec<String> = futures::future::join_all(
        (0..20).map(|_| start(&server.api, &[KEY], "echo $PPID", json!({}))),
    )
    .await;
    for task in &tasks {
        let done = wait_final(&server.api, task, &[KEY], PATIENCE).await;
        assert_eq!(done[0]["status"], 2, "{done:?}");
        assert_eq!(
            done[0]["screen"],
            format!("{}\n", a.pid()),
            "ran on the impostor"
        );
    }
    let tried = count(&server.log(), &[&pinned, &id_b]);
    eventually("B refused again after the tasks", PATIENCE, || async {
        (count(&server.log(), &[&pinned, &id_b]) > tried)
            .then_some(())
            .ok_or(tail(&server.log()))
    })
    .await;
    for replaced in ["closing the older one", "replaces its older one"] {
        assert_eq!(
            count(&server.log(), &[replaced]),
            0,
            "A's link was replaced"
        );
    }

    // A flap of A itself: its new connection is its own and is accepted.
    let registered = count(&server.log(), &["agent registered", &id_a]);
    a.restart();
    eventually("A registered again", PATIENCE, || async {
        (count(&server.log(), &["agent registered", &id_a]) > registered)
            .then_some(())
            .ok_or(tail(&server.log()))
    })
    .await;
    wait_holder(&server, KEY, &id_a).await;

    // The pin is kept across a server restart: with A away, B is still refused.
    a.stop();
    server.restart().await;
    let before = count(&server.log(), &[&pinned, &id_b]);
    eventually("B refused by the restarted server", PATIENCE, || async {
        let now = count(&server.log(), &[&pinned, &id_b]);
        (now > before).then_some(()).ok_or(tail(&server.log()))
    })
    .await;
    assert_ne!(holder(&server, KEY).await.as_deref(), Some(id_b.as_str()));

    // Host A was re-installed elsewhere: the operator releases the pin.
    let config = server.config_path.display().to_string();
    let (ok, text) = gse_server(&["agents", "release-pin", "-c", &config, "--agent", KEY]);
    assert!(ok, "{text}");
    assert!(text.contains(&id_a), "names the released agent id: {text}");
    wait_holder(&server, KEY, &id_b).await;
    let (ok, text) = gse_server(&["agents", "pins", "-c", &config]);
    assert!(ok && text.contains(KEY) && text.contains(&id_b), "{text}");
    b.stop();
}

#[tokio::test]
async fn r9_3_a_per_agent_certificate_names_the_one_identity_it_may_claim() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let dir = cluster.certs.dir.display().to_string();
    let issue = |args: &[&str]| {
        let mut all = vec!["certs", "issue", "--dir", &dir];
        all.extend_from_slice(args);
        let (ok, text) = gse_server(&all);
        assert!(ok, "{text}");
    };
    issue(&["--agent", "0:127.0.0.71", "--name", "host71"]);
    let cert_71 = TlsFiles {
        cert_file: cluster.certs.dir.join("host71.crt"),
        key_file: cluster.certs.dir.join("host71.key"),
        ..cluster.tls(CertKind::Agent)
    };

    // The certificate of .71 claiming .72: refused, both sides say why.
    let impostor = cluster.agent(&server, with_tls("127.0.0.72", cert_71.clone()));
    let says = "certificate is issued for 0:127.0.0.71";
    server_log_has(&server, &[says, "claims 0:127.0.0.72"]).await;
    agent_log_has(&impostor, &["refused our registration", says]).await;
    assert_eq!(holder(&server, "0:127.0.0.72").await, None);

    // Its own identity: accepted.
    let own = cluster.agent(&server, with_tls("127.0.0.71", cert_71));
    let id = wait_agent_id(&own).await;
    wait_holder(&server, "0:127.0.0.71", &id).await;

    // A certificate that also names the agent id refuses another id.
    issue(&[
        "--agent",
        "0:127.0.0.73",
        "--agent-id",
        "host73-real-id",
        "--name",
        "host73",
    ]);
    let cert_73 = TlsFiles {
        cert_file: cluster.certs.dir.join("host73.crt"),
        key_file: cluster.certs.dir.join("host73.key"),
        ..cluster.tls(CertKind::Agent)
    };
    let other_id = cluster.agent(&server, with_tls("127.0.0.73", cert_73));
    server_log_has(
        &server,
        &["host73-real-id", "claims 0:127.0.0.73 with agent id"],
    )
    .await;
    agent_log_has(&other_id, &["refused our registration", "host73-real-id"]).await;
    assert_eq!(holder(&server, "0:127.0.0.73").await, None);
    drop(impostor);
}

#[tokio::test]
async fn r9_3_server_and_api_client_certificates_cannot_register_as_agents() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let as_server = cluster.agent(
        &server,
        with_tls("127.0.0.81", cluster.tls(CertKind::Server)),
    );
    server_log_has(&server, &["presented a server certificate"]).await;
    agent_log_has(&as_server, &["our certificate", "is a server certificate"]).await;
    let as_client = cluster.agent(
        &server,
        with_tls("127.0.0.82", cluster.tls(CertKind::ApiClient)),
    );
    server_log_has(&server, &["presented an API client certificate"]).await;
    agent_log_has(
        &as_client,
        &["our certificate", "is an API client certificate"],
    )
    .await;
    for key in ["0:127.0.0.81", "0:127.0.0.82"] {
        assert_eq!(holder(&server, key).await, None, "{key} registered");
    }
}

#[tokio::test]
async fn r9_3_an_agent_refuses_a_server_presenting_an_agent_certificate() {
    let cluster = Cluster::new();
    // An agent certificate that even carries the server's name.
    let paths = cluster
        .certs
        .issue(
            CertKind::Agent,
            Some("agent-named-server"),
            &["gse-server".into()],
            30,
            false,
        )
        .unwrap();
    let tls = TlsFiles {
        cert_file: paths.cert,
        key_file: paths.key,
        ..cluster.tls(CertKind::Server)
    };
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(move |cfg| cfg.tls = tls.clone())),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.83"));
    agent_log_has(&agent, &["presented an agent certificate"]).await;
    server_log_has(&server, &["our certificate", "is an agent certificate"]).await;
    assert_eq!(holder(&server, "0:127.0.0.83").await, None);
}

#[tokio::test]
async fn r9_3_unmarked_certificates_are_refused_unless_the_upgrade_switch_is_on() {
    let cluster = Cluster::new();
    let old = bad_tls::write_odd_cert(&cluster.certs, OddCert::Unmarked, "gse-agent", "old_agent");
    let server = cluster.server(ServerOptions::default()).await;
    let agent = cluster.agent(&server, with_tls("127.0.0.84", old.clone()));
    server_log_has(
        &server,
        &["presented a certificate without a gse role mark"],
    )
    .await;
    agent_log_has(&agent, &["our certificate", "has no gse role mark"]).await;
    assert_eq!(holder(&server, "0:127.0.0.84").await, None);
    drop(agent);
    drop(server);

    let cluster2 = Cluster::new();
    let old = bad_tls::write_odd_cert(&cluster2.certs, OddCert::Unmarked, "gse-agent", "old_agent");
    let server = cluster2
        .server(ServerOptions {
            customize: Some(Arc::new(|cfg| cfg.tls.legacy_unmarked_certs = true)),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster2.agent(&server, with_tls("127.0.0.85", old));
    let id = wait_agent_id(&agent).await;
    wait_holder(&server, "0:127.0.0.85", &id).await;
}

#[tokio::test]
async fn r9_10_self_signed_certificates_are_explained_on_both_sides() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    for (i, kind) in [OddCert::SelfSignedCa, OddCert::SelfSignedLeaf]
        .into_iter()
        .enumerate()
    {
        let tls = bad_tls::write_odd_cert(&cluster.certs, kind, "gse-agent", &format!("self{i}"));
        let ip = format!("127.0.0.9{i}");
        let agent = cluster.agent(&server, with_tls(&ip, tls));
        server_log_has(&server, &["presented a self-signed certificate", &ip]).await;
        agent_log_has(&agent, &["our certificate", "is self-signed"]).await;
        assert_eq!(holder(&server, &format!("0:{ip}")).await, None);
    }

    // A server with a self-signed certificate: the agent says so, and the
    // server hears why it was refused.
    let cluster = Cluster::new();
    let tls = bad_tls::write_odd_cert(
        &cluster.certs,
        OddCert::SelfSignedCa,
        "gse-server",
        "self_server",
    );
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(move |cfg| cfg.tls = tls.clone())),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.93"));
    agent_log_has(&agent, &["presented a self-signed certificate"]).await;
    server_log_has(&server, &["our certificate", "is self-signed"]).await;
}

#[tokio::test]
async fn r9_10_x509_v1_certificates_are_explained() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let v1_agent = bad_tls::write_odd_cert(&cluster.certs, OddCert::V1, "gse-agent", "v1_agent");

    // A client (another TLS stack) presenting a v1 certificate.
    let refused = bad_tls::raw_client(server.link_addr, &v1_agent).await;
    assert!(refused.is_err(), "a v1 client certificate got through");
    server_log_has(&server, &["presented an X.509 v1 certificate"]).await;

    // An agent given a v1 certificate says so and does not start its link.
    let agent = cluster.agent(&server, with_tls("127.0.0.94", v1_agent));
    agent_log_has(&agent, &["v1_agent.crt holds an X.509 v1 certificate"]).await;

    // A server presenting a v1 certificate: the agent says so.
    let v1_server = bad_tls::write_odd_cert(&cluster.certs, OddCert::V1, "gse-server", "v1_server");
    let fake = bad_tls::raw_server("127.0.0.1".parse().unwrap(), &v1_server).await;
    let mut opts = AgentOptions::ip("127.0.0.95");
    opts.customize = Some(Arc::new(move |cfg| {
        cfg.upstream.servers = vec![fake.to_string()];
    }));
    let agent = cluster.agent(&server, opts);
    agent_log_has(&agent, &["presented an X.509 v1 certificate"]).await;
}

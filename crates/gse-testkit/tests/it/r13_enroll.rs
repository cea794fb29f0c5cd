//! Agent enrollment (issue 13 item 7) with real processes: `gse-server
//! enroll token` prints a one-line `gse-agent join`; the agent gets its own
//! certificate (bound to its identity, its key made on the host) and then
//! registers with it; a reused token, a token for another host, a node
//! that is not from the pinned CA, and a node without `[enroll]` are all
//! refused; and a connection without a certificate may enroll but never
//! register.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gse_agent::AgentConfig;
use gse_core::certs::CertKind;
use gse_core::tls::TlsFiles;
use gse_testkit::{AgentProc, Cluster, ServerOptions, ServerProc, bin, eventually};

/// The join command's three values, from `enroll token`'s output.
struct Join {
    server: String,
    token: String,
    pin: String,
}

fn token(server: &ServerProc, extra: &[&str]) -> Join {
    let out = Command::new(bin("gse-server"))
        .args(["enroll", "token", "-c"])
        .arg(&server.config_path)
        .args(["--ttl", "10m", "--server", &server.link_addr.to_string()])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("gse-agent join"))
        .unwrap_or_else(|| panic!("no join command in {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).unwrap();
        words[i + 1].to_string()
    };
    Join {
        server: after("--server"),
        token: after("--token"),
        pin: after("--ca-sha256"),
    }
}

/// A fresh agent host: its config (no certificate yet) in `dir`.
fn host(dir: &Path, server: &ServerProc) -> PathBuf {
    let certs = dir.join("certs");
    let mut cfg = AgentConfig::new(
        dir.join("data"),
        vec![server.link_addr.to_string()],
        TlsFiles::new(
            certs.join("gseca.crt"),
            certs.join("gse_agent.crt"),
            certs.join("gse_agent.key"),
        ),
    );
    cfg.agent.identity_ip = None;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

/// `gse-agent join`: its output, and whether it succeeded.
fn join(config: &Path, j: &Join, pin: &str) -> (bool, String) {
    let out = Command::new(bin("gse-agent"))
        .arg("-c")
        .arg(config)
        .args([
            "join",
            "--server",
            &j.server,
            "--token",
            &j.token,
            "--ca-sha256",
            pin,
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

async fn enrolling_server(cluster: &Cluster) -> ServerProc {
    let ca_key = cluster.certs.ca_key();
    cluster
        .server(ServerOptions {
            customize: Some(Arc::new(move |cfg| {
                cfg.enroll.enabled = true;
                cfg.enroll.ca_key_file = ca_key.clone();
            })),
            ..ServerOptions::default()
        })
        .await
}

#[tokio::test]
async fn r13_an_agent_joins_with_a_token_and_registers_with_its_own_certificate() {
    let cluster = Cluster::new();
    let server = enrolling_server(&cluster).await;
    let j = token(&server, &[]);
    let config = host(&cluster.path.join("new-host"), &server);

    let (ok, said) = join(&config, &j, &j.pin);
    assert!(ok, "{said}");
    assert!(said.contains("joined as 0:127.0.0.1"), "{said}");
    let certs = cluster.path.join("new-host/certs");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(certs.join("gse_agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // Bound to its identity (a per-agent certificate), from the cluster's CA.
    let pem = std::fs::read(certs.join("gse_agent.crt")).unwrap();
    let der: rustls::pki_types::CertificateDer<'_> =
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    let mark = gse_core::certs::read_mark(&der).unwrap().expect("a mark");
    assert_eq!(mark.kind, CertKind::Agent);
    assert_eq!(
        mark.identity.map(|i| i.key.to_string()),
        Some("0:127.0.0.1".to_string())
    );

    // It runs with it.
    let _agent = AgentProc::from_config(
        cluster.path.join("new-host"),
        config.clone(),
        "127.0.0.1".parse().unwrap(),
        Vec::new(),
    );
    server.api.wait_alive("127.0.0.1").await;

    // The token is spent.
    let again = host(&cluster.path.join("other-host"), &server);
    let (ok, said) = join(&again, &j, &j.pin);
    assert!(!ok);
    assert!(said.contains("was used already"), "{said}");
}

#[tokio::test]
async fn r13_a_wrong_pin_a_pinned_identity_and_a_node_without_enroll_refuse() {
    let cluster = Cluster::new();
    let server = enrolling_server(&cluster).await;

    // A node that is not from the pinned CA gets nothing: the token stays good.
    let j = token(&server, &[]);
    let config = host(&cluster.path.join("host-a"), &server);
    let (ok, said) = join(&config, &j, &"0".repeat(64));
    assert!(!ok);
    assert!(said.contains("not the node the token is for"), "{said}");
    let (ok, said) = join(&config, &j, &j.pin);
    assert!(ok, "the token was not sent, so not spent: {said}");

    // A token pinned to another identity.
    let other = token(&server, &["--ip", "10.9.9.9"]);
    let config = host(&cluster.path.join("host-b"), &server);
    let (ok, said) = join(&config, &other, &other.pin);
    assert!(!ok);
    assert!(
        said.contains("the token is for 0:10.9.9.9, not 0:127.0.0.1"),
        "{said}"
    );

    // A node where enrollment is off takes no connection without a
    // certificate.
    let plain = cluster
        .server(ServerOptions {
            name: Some("plain".into()),
            ..ServerOptions::default()
        })
        .await;
    let j2 = Join {
        server: plain.link_addr.to_string(),
        ..token(&server, &[])
    };
    let config = host(&cluster.path.join("host-c"), &plain);
    let (ok, said) = join(&config, &j2, &j2.pin);
    assert!(!ok);
    assert!(said.contains("is [enroll] enabled"), "{said}");
}

#[tokio::test]
async fn r13_a_connection_without_a_certificate_may_enroll_but_never_register() {
    use futures::{SinkExt, StreamExt};
    use gse_proto::link::Register;
    use gse_proto::{Frame, FrameCodec, MsgType};

    let cluster = Cluster::new();
    let server = enrolling_server(&cluster).await;
    let tcp = tokio::net::TcpStream::connect(server.link_addr)
        .await
        .unwrap();
    let (config, _) = gse_core::tls::enroll::enrolling_client_config();
    let name = rustls::pki_types::ServerName::try_from("gse-server").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("the handshake without a certificate succeeds where agents enroll");
    let mut link = tokio_util::codec::Framed::new(tls, FrameCodec::default());
    let register = Register {
        agent_id: "0100aaaabbbbccccddddeeeeffff0000".into(),
        cloud_id: 0,
        identity_ip: "127.0.0.77".into(),
        version: "9".into(),
        protocol_version: gse_proto::LINK_PROTOCOL_VERSION,
        ..Register::default()
    };
    link.send(Frame::new(MsgType::Register, 1, &register))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(15), link.next())
        .await
        .expect("the node closes the connection");
    assert!(
        !matches!(&answer, Some(Ok(f)) if f.msg_type == MsgType::RegisterAck),
        "registered without a certificate: {answer:?}"
    );
    eventually(
        "the node never lists it",
        Duration::from_secs(3),
        || async {
            (server.api.alive(0, "127.0.0.77").await != 1)
                .then_some(())
                .ok_or_else(String::new)
        },
    )
    .await;
}

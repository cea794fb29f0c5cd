//! K6: every agent link is mutual TLS. A certificate from another CA, or no
//! certificate at all, is refused, and both sides log one line saying what
//! did not match.

use std::sync::Arc;
use std::time::Duration;

use gse_core::certs::CertKind;
use gse_testkit::{AgentOptions, Cluster, ServerOptions, ServerProc, eventually};
use serde_json::json;

async fn server_log_has(server: &ServerProc, needle: &str) {
    eventually(
        &format!("server log line {needle:?}"),
        Duration::from_secs(15),
        || async {
            server
                .log()
                .contains(needle)
                .then_some(())
                .ok_or(String::new())
        },
    )
    .await;
}

async fn assert_not_registered(server: &ServerProc, id: &str) {
    let (_, v) = server
        .api
        .post(
            "/api/v2/cluster/list_agent_state",
            json!({"agent_id_list": [id]}),
        )
        .await;
    assert_eq!(v["code"], 1011003, "{v}");
}

#[tokio::test]
async fn k6_agent_from_another_ca_is_refused_and_both_sides_say_why() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let foreign = cluster.foreign_certs();
    let mut opts = AgentOptions::ip("127.0.0.41");
    opts.tls = Some(gse_testkit::procs_tls(&foreign, CertKind::Agent));
    let agent = cluster.agent(&server, opts);

    // The agent does not trust the server's certificate; the server hears
    // the agent's refusal.
    eventually("agent log explains", Duration::from_secs(15), || async {
        agent
            .log()
            .contains("not signed by our CA")
            .then_some(())
            .ok_or(agent.log())
    })
    .await;
    server_log_has(&server, "does not trust our certificate").await;
    for line in agent.log().lines().filter(|l| l.contains("cannot connect")) {
        assert!(
            line.contains("TLS refused"),
            "one clear line per attempt: {line}"
        );
    }
    assert_not_registered(&server, "0:127.0.0.41").await;
}

#[tokio::test]
async fn k6_agent_certificate_from_another_ca_is_refused_by_the_server() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let foreign = cluster.foreign_certs();
    // Trusts our CA, but presents a certificate the server cannot verify.
    let mut tls = gse_testkit::procs_tls(&foreign, CertKind::Agent);
    tls.ca_file = cluster.certs.ca_cert();
    let mut opts = AgentOptions::ip("127.0.0.42");
    opts.tls = Some(tls);
    let agent = cluster.agent(&server, opts);

    server_log_has(&server, "presented a certificate not signed by our CA").await;
    eventually("agent log explains", Duration::from_secs(15), || async {
        agent
            .log()
            .contains("does not trust our certificate")
            .then_some(())
            .ok_or(agent.log())
    })
    .await;
    assert_not_registered(&server, "0:127.0.0.42").await;
}

#[tokio::test]
async fn k6_client_without_certificate_is_refused() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(cluster.certs.ca_cert()).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        let cert: rustls::pki_types::CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.link_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("gse-server").unwrap();
    // TLS 1.3: the handshake looks fine to the client; the refusal shows on
    // the first read.
    let refused = match connector.connect(name, tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"hello").await;
            let mut buf = [0u8; 16];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate got through");
    server_log_has(&server, "presented no certificate").await;
}

//! Unit tests of the role checks and the words for refusals: handshakes
//! run in memory between our own client and server configs.

use std::io;

use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;

use super::*;
use crate::certs::{CertDir, CertKind};

fn cert_dir() -> (tempfile::TempDir, CertDir) {
    let dir = tempfile::tempdir().unwrap();
    let cd = CertDir::new(dir.path());
    cd.init(&[], 30).unwrap();
    (dir, cd)
}

fn files(cd: &CertDir, kind: CertKind, stem: Option<&str>) -> TlsFiles {
    let p = cd.paths(kind, stem);
    TlsFiles::new(cd.ca_cert(), p.cert, p.key)
}

/// Moves every pending TLS record from one end to the other; the error the
/// receiving end found in them, if any.
fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Option<rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if to.read_tls(&mut rd).unwrap() == 0 {
            break;
        }
        if let Err(e) = to.process_new_packets() {
            return Some(e);
        }
    }
    None
}

/// Runs a handshake (and the first flight after it, where TLS 1.3 reports
/// a refused client certificate); each end's error as its stream gives it.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Option<io::Error>, Option<io::Error>) {
    handshake_as(crate::certs::DEFAULT_SERVER_NAME, client, server)
}

/// [`handshake`], the client connecting with the DNS name `name`.
fn handshake_as(
    name: &'static str,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Option<io::Error>, Option<io::Error>) {
    let name = ServerName::try_from(name).unwrap();
    let mut c: rustls::Connection = ClientConnection::new(client, name).unwrap().into();
    let mut s: rustls::Connection = ServerConnection::new(server).unwrap().into();
    let (mut client_err, mut server_err) = (None, None);
    for _ in 0..6 {
        server_err = server_err.or_else(|| pump(&mut c, &mut s));
        client_err = client_err.or_else(|| pump(&mut s, &mut c));
    }
    let io = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    (client_err.map(io), server_err.map(io))
}

fn say(side: Side<'_>, files: &TlsFiles, err: &Option<io::Error>) -> String {
    let err = err.as_ref().expect("a refusal");
    explain(side, "peer", files, err).expect("a TLS refusal")
}

#[test]
fn an_agent_and_its_server_agree() {
    let (_d, cd) = cert_dir();
    let agent = files(&cd, CertKind::Agent, None);
    let server = files(&cd, CertKind::Server, None);
    let (c, s) = handshake(
        client_config(&agent).unwrap(),
        server_config(&server).unwrap(),
    );
    assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
}

#[test]
fn a_server_certificate_cannot_be_an_agent_and_both_sides_say_so() {
    let (_d, cd) = cert_dir();
    let wrong = files(&cd, CertKind::Server, None);
    let server = files(&cd, CertKind::Server, None);
    let (c, s) = handshake(
        client_config(&wrong).unwrap(),
        server_config(&server).unwrap(),
    );
    let text = say(Side::Server { sni: None }, &server, &s);
    assert!(
        text.contains(
            "presented a server certificate (marked gse://server), not an agent certificate"
        ),
        "{text}"
    );
    let text = say(Side::Client, &wrong, &c);
    assert!(
        text.contains("our certificate") && text.contains("is a server certificate"),
        "{text}"
    );
}

#[test]
fn an_agent_certificate_cannot_be_the_server_and_both_sides_say_so() {
    let (_d, cd) = cert_dir();
    let name = vec![crate::certs::DEFAULT_SERVER_NAME.to_string()];
    cd.issue(CertKind::Agent, Some("fake"), &name, 30, false)
        .unwrap();
    let fake = files(&cd, CertKind::Agent, Some("fake"));
    let agent = files(&cd, CertKind::Agent, None);
    let (c, s) = handshake(
        client_config(&agent).unwrap(),
        server_config(&fake).unwrap(),
    );
    let text = say(Side::Client, &agent, &c);
    assert!(
        text.contains(
            "presented an agent certificate (marked gse://agent), not a server certificate"
        ),
        "{text}"
    );
    let text = say(Side::Server { sni: None }, &fake, &s);
    assert!(text.contains("is an agent certificate"), "{text}");
}

#[test]
fn p2p_peers_must_be_agents() {
    let (_d, cd) = cert_dir();
    let agent = files(&cd, CertKind::Agent, None);
    let (c, s) = handshake_as(
        "gse-agent",
        peer_client_config(&agent).unwrap(),
        server_config(&agent).unwrap(),
    );
    assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
    // A server certificate that even carries the peers' name.
    let names = vec!["gse-agent".to_string()];
    cd.issue(CertKind::Server, Some("srv"), &names, 30, false)
        .unwrap();
    let server = files(&cd, CertKind::Server, Some("srv"));
    let (c, _) = handshake_as(
        "gse-agent",
        peer_client_config(&agent).unwrap(),
        server_config(&server).unwrap(),
    );
    let text = say(Side::Client, &agent, &c);
    assert!(text.contains("presented a server certificate"), "{text}");
}

#[test]
fn an_api_client_certificate_is_not_an_agent() {
    let (_d, cd) = cert_dir();
    cd.issue(CertKind::ApiClient, None, &[], 30, false).unwrap();
    let client = files(&cd, CertKind::ApiClient, None);
    let server = files(&cd, CertKind::Server, None);
    let (_, s) = handshake(
        client_config(&client).unwrap(),
        server_config(&server).unwrap(),
    );
    let text = say(Side::Server { sni: None }, &server, &s);
    assert!(
        text.contains("presented an API client certificate"),
        "{text}"
    );
}

/// A handshake over an in-memory pipe, the server side through [`accept`]
/// (which keeps the name the client asked for): each side's error.
async fn handshake_piped(
    name: &str,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Option<io::Error>, Option<AcceptError>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let (c, s) = tokio::join!(connector.connect(name, c), accept(server, s));
    (c.err(), s.err())
}

const DEFAULT_NAMES: &str = "gse-server, localhost, 127.0.0.1";

#[tokio::test]
async fn a_name_the_server_certificate_lacks_is_named_on_both_sides() {
    let (_d, cd) = cert_dir();
    let agent = files(&cd, CertKind::Agent, None);
    let server = files(&cd, CertKind::Server, None);
    let (c, s) = handshake_piped(
        "gse.example.org",
        client_config(&agent).unwrap(),
        server_config(&server).unwrap(),
    )
    .await;
    let text = say(Side::Client, &agent, &c);
    let wanted = format!("presented a certificate for {DEFAULT_NAMES}, not for gse.example.org");
    assert!(text.contains(&wanted), "{text}");
    assert!(text.contains("--server-name gse.example.org`"), "{text}");
    assert!(
        !text.contains("DnsName") && !text.contains("gse://"),
        "{text}"
    );

    let s = s.expect("the server hears the refusal");
    assert_eq!(s.sni.as_deref(), Some("gse.example.org"));
    let text = s.explain("peer", &server).expect("a TLS refusal");
    assert!(
        text.contains("connects with the name gse.example.org")
            && text.contains(&format!("ours carries {DEFAULT_NAMES}:")),
        "{text}"
    );
    assert!(!text.contains("another CA"), "{text}");
}

#[tokio::test]
async fn an_ip_name_leaves_the_server_both_causes() {
    let (_d, cd) = cert_dir();
    let agent = files(&cd, CertKind::Agent, None);
    let server = files(&cd, CertKind::Server, None);
    let (c, s) = handshake_piped(
        "10.1.2.3",
        client_config(&agent).unwrap(),
        server_config(&server).unwrap(),
    )
    .await;
    let text = say(Side::Client, &agent, &c);
    assert!(text.contains("not for 10.1.2.3"), "{text}");
    let s = s.expect("the server hears the refusal");
    assert_eq!(s.sni, None, "no SNI for an IP address");
    let text = s.explain("peer", &server).expect("a TLS refusal");
    assert!(
        text.contains("sent no name")
            && text.contains("most likely it connects with a name our certificate does not carry")
            && text.contains("less likely, our certificate comes from another CA"),
        "{text}"
    );
}

#[tokio::test]
async fn another_ca_is_blamed_on_the_ca_and_a_missing_name_besides() {
    let (_d, cd) = cert_dir();
    let (_f, foreign) = cert_dir();
    let agent = files(&cd, CertKind::Agent, None);
    let server = files(&foreign, CertKind::Server, None);
    for (name, besides) in [("gse-server", false), ("gse.example.org", true)] {
        let (_, s) = handshake_piped(
            name,
            client_config(&agent).unwrap(),
            server_config(&server).unwrap(),
        )
        .await;
        let s = s.expect("the server hears the refusal");
        let text = s.explain("peer", &server).expect("a TLS refusal");
        // UnknownCA, or DecryptError when both CAs got one name (made
        // within a second): the chain's alerts.
        assert!(text.contains("comes from another CA"), "{text}");
        assert_eq!(
            text.contains("besides, the agent connects with the name gse.example.org"),
            besides,
            "{text}"
        );
    }
}

#[test]
fn names_are_the_dns_names_and_ips_and_a_reissue_keeps_them() {
    let (_d, cd) = cert_dir();
    let extra = vec!["10.77.0.1".to_string(), "gse.lan".to_string()];
    cd.issue(CertKind::Server, Some("srv"), &extra, 30, false)
        .unwrap();
    let pem = std::fs::read(cd.paths(CertKind::Server, Some("srv")).cert).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let ours = names::cert_names(&der);
    assert_eq!(
        ours,
        [
            "gse-server",
            "localhost",
            "127.0.0.1",
            "10.77.0.1",
            "gse.lan"
        ]
    );
    assert_eq!(
        names::reissue_command(&ours, "gse.example.org"),
        "gse-server certs init --dir <the CA's directory> --server-name 10.77.0.1 --server-name gse.lan --server-name gse.example.org"
    );
    assert_eq!(
        names::reissue_command(&ours, "gse.lan"),
        "gse-server certs init --dir <the CA's directory> --server-name 10.77.0.1 --server-name gse.lan"
    );
}

/// A node's agent link takes agents and proxies (issue 12); nothing else,
/// and no other listener takes proxies.
#[test]
fn the_agent_link_takes_agents_and_proxies_and_only_it_takes_proxies() {
    let (_d, cd) = cert_dir();
    cd.issue(CertKind::Proxy, None, &[], 30, false).unwrap();
    cd.issue(CertKind::ApiClient, None, &[], 30, false).unwrap();
    let server = files(&cd, CertKind::Server, None);
    for (kind, passes) in [
        (CertKind::Agent, true),
        (CertKind::Proxy, true),
        (CertKind::Server, false),
        (CertKind::ApiClient, false),
    ] {
        let peer = files(&cd, kind, None);
        let (c, s) = handshake(
            client_config(&peer).unwrap(),
            link_server_config(&server).unwrap(),
        );
        assert_eq!(c.is_none() && s.is_none(), passes, "{kind:?}: {c:?} {s:?}");
    }
    // A DataServer or an agent's P2P listener takes agents only.
    let proxy = files(&cd, CertKind::Proxy, None);
    let (_, s) = handshake(
        client_config(&proxy).unwrap(),
        server_config(&server).unwrap(),
    );
    let text = say(Side::Server { sni: None }, &server, &s);
    assert!(text.contains("a proxy certificate"), "{text}");
}

/// An area's agents (and a chain's lower proxy) take that area's proxy as
/// their server (issue 12), by the name "gse-proxy"; never another area's
/// proxy, and an agent of area 0 takes no proxy at all.
#[test]
fn an_areas_agents_take_their_areas_proxy_as_their_server_and_no_other() {
    let (_d, cd) = cert_dir();
    cd.issue_proxy(7, None, &[], 30, false).unwrap();
    cd.issue_proxy(8, None, &[], 30, false).unwrap();
    let agent = files(&cd, CertKind::Agent, None);
    let proxy = |area: i64| files(&cd, CertKind::Proxy, Some(&format!("gse_proxy_{area}")));
    let as_proxy = |client_area: i64, proxy_area: i64| {
        handshake_as(
            "gse-proxy",
            upstream_client_config(&agent, client_area).unwrap(),
            link_server_config(&proxy(proxy_area)).unwrap(),
        )
    };
    let (c, s) = as_proxy(7, 7);
    assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
    let (c, _) = as_proxy(8, 7);
    let text = say(Side::Client, &agent, &c);
    assert!(
        text.contains("cloud area 7") && text.contains("area 8"),
        "{text}"
    );
    let (c, _) = as_proxy(0, 7);
    assert!(c.is_some(), "an agent of area 0 took a proxy as its server");
    // The servers themselves still pass for an area's agent.
    let server = files(&cd, CertKind::Server, None);
    let (c, s) = handshake(
        upstream_client_config(&agent, 7).unwrap(),
        server_config(&server).unwrap(),
    );
    assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
}

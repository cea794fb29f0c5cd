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

fn say(side: Side, files: &TlsFiles, err: &Option<io::Error>) -> String {
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
    let text = say(Side::Server, &server, &s);
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
    let text = say(Side::Server, &fake, &s);
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
    let client = files(&cd, CertKind::ApiClient, None);
    let server = files(&cd, CertKind::Server, None);
    let (_, s) = handshake(
        client_config(&client).unwrap(),
        server_config(&server).unwrap(),
    );
    let text = say(Side::Server, &server, &s);
    assert!(
        text.contains("presented an API client certificate"),
        "{text}"
    );
}

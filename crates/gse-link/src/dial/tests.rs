//! Dialing real loopback listeners: from a bind address into the accept
//! loop, and each way a dial fails.

use gse_core::certs::{CertDir, CertKind};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::accept::{AcceptNames, Acceptor, AcceptorParts};
use crate::limits::{CapNames, ConnLimits};

const NAMES: AcceptNames = AcceptNames {
    one: "test connection",
    many: "test connections",
    over_caps: "too many",
    tls_prefix: "",
    refused_metric: "gse_test_refused_total",
    tls_failures_metric: None,
};

const CAPS: CapNames = CapNames {
    total: "over test.max",
    per_ip: "over test.max_per_ip",
    gauge: "gse_test_pending",
};

fn cert_dir() -> (tempfile::TempDir, CertDir) {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path());
    certs.init(&[], 30).unwrap();
    (dir, certs)
}

fn dialer(certs: &CertDir, server_name: &str, bind_ip: Option<IpAddr>) -> Dialer {
    let files = certs.tls_files(CertKind::Agent);
    Dialer::new(DialerParts {
        tls: gse_core::tls::client_config(&files).unwrap(),
        tls_files: files,
        server_name: server_name.into(),
        bind_ip,
        connect_timeout: Duration::from_secs(10),
        keepalive: true,
    })
}

/// An accept loop on loopback; each accepted peer's address comes out of
/// the receiver.
async fn server(certs: &CertDir) -> (String, mpsc::Receiver<SocketAddr>, CancellationToken) {
    let files = certs.tls_files(CertKind::Server);
    let acceptor = Acceptor::new(AcceptorParts {
        names: NAMES,
        tls: gse_core::tls::server_config(&files).unwrap(),
        tls_files: files,
        handshake_timeout: Duration::from_secs(10),
        pending: Arc::new(ConnLimits::new(8, 8, CAPS)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    tokio::spawn(acceptor.run(listener, stop.clone(), move |a| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(a.peer).await;
        }
    }));
    (addr, rx, stop)
}

#[tokio::test]
async fn a_dial_from_the_bind_address_reaches_the_accept_loop() {
    let (_d, certs) = cert_dir();
    let (addr, mut peers, _stop) = server(&certs).await;
    let from: IpAddr = "127.0.0.3".parse().unwrap();
    let d = dialer(&certs, gse_core::certs::DEFAULT_SERVER_NAME, Some(from));
    let _tls = d.dial(&addr).await.unwrap();
    let peer = timeout(Duration::from_secs(10), peers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip(), from);
}

#[tokio::test]
async fn nothing_listening_is_an_unanswered_connect() {
    let (_d, certs) = cert_dir();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let e = dialer(&certs, "gse-server", None)
        .dial(&addr.to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(e, DialError::Connect { addr: a, .. } if a == addr),
        "{e}"
    );
    assert_eq!(e.failure(), ConnectFailure::Unanswered);
}

#[tokio::test]
async fn a_listener_that_never_answers_tls_times_out() {
    let (_d, certs) = cert_dir();
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap().to_string();
    let mut d = dialer(&certs, "gse-server", None);
    d.connect_timeout = Duration::from_millis(200);
    let e = d.dial(&addr).await.unwrap_err();
    assert!(matches!(e, DialError::TlsTimeout { .. }), "{e}");
    assert_eq!(e.failure(), ConnectFailure::Other);
}

#[tokio::test]
async fn a_name_the_server_certificate_lacks_is_explained() {
    let (_d, certs) = cert_dir();
    let (addr, _peers, _stop) = server(&certs).await;
    let e = dialer(&certs, "gse.example.org", None)
        .dial(&addr)
        .await
        .unwrap_err();
    match e {
        DialError::Tls { explained, .. } => {
            let text = explained.expect("a TLS refusal in words");
            assert!(text.contains("gse.example.org"), "{text}");
        }
        other => panic!("expected a TLS error, got {other}"),
    }
}

#[tokio::test]
async fn an_invalid_server_name_is_named() {
    let (_d, certs) = cert_dir();
    let (addr, _peers, _stop) = server(&certs).await;
    let e = dialer(&certs, "not a name!", None)
        .dial(&addr)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DialError::ServerName { name, .. } if name == "not a name!"),
        "{e}"
    );
}

//! The accept loop on a real loopback listener: caps, handshake deadline,
//! and what a handler gets.

use std::time::Duration;

use gse_core::certs::{CertDir, CertKind};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::*;
use crate::limits::CapNames;

const NAMES: AcceptNames = AcceptNames {
    one: "test connection",
    many: "test connections",
    over_caps: "too many test connections without hello yet",
    tls_prefix: "test: ",
    refused_metric: "gse_test_connections_refused_total",
    tls_failures_metric: Some("gse_test_tls_failures_total"),
};

const CAPS: CapNames = CapNames {
    total: "over test.max",
    per_ip: "over test.max_per_ip",
    gauge: "gse_test_pending",
};

/// A listener that hands each accepted connection to the test.
struct Fixture {
    _dir: tempfile::TempDir,
    certs: CertDir,
    addr: SocketAddr,
    pending: Arc<ConnLimits>,
    accepted: mpsc::Receiver<Accepted>,
    _stop: tokio_util::sync::DropGuard,
}

async fn fixture(per_ip: usize, handshake_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path());
    certs.init(&[], 30).unwrap();
    let files = certs.tls_files(CertKind::Server);
    let pending = Arc::new(ConnLimits::new(16, per_ip, CAPS));
    let acceptor = Acceptor::new(AcceptorParts {
        names: NAMES,
        tls: gse_core::tls::server_config(&files).unwrap(),
        tls_files: files,
        handshake_timeout,
        pending: pending.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = mpsc::channel(4);
    let stop = CancellationToken::new();
    tokio::spawn(acceptor.run(listener, stop.clone(), move |a| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(a).await;
        }
    }));
    Fixture {
        _dir: dir,
        certs,
        addr,
        pending,
        accepted,
        _stop: stop.drop_guard(),
    }
}

/// Whether the server closes `tcp` within `within` (it sends nothing).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Waits until `cond` holds, for at most 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn over_the_per_address_cap_a_connection_is_closed_at_once() {
    let f = fixture(1, Duration::from_secs(60)).await;
    let mut held = TcpStream::connect(f.addr).await.unwrap();
    until("the first connection counted", || f.pending.open() == 1).await;
    let mut over = TcpStream::connect(f.addr).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(10)).await);
    // The first one still waits for its handshake.
    assert!(!closed_within(&mut held, Duration::from_millis(100)).await);
    assert_eq!(f.pending.open(), 1);
}

#[tokio::test]
async fn a_handshake_not_made_in_time_is_closed_and_frees_its_place() {
    let f = fixture(1, Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    until("its place freed", || f.pending.open() == 0).await;
}

#[tokio::test]
async fn a_client_past_its_handshake_reaches_the_handler_still_pending() {
    let mut f = fixture(1, Duration::from_secs(60)).await;
    let files = f.certs.tls_files(CertKind::Agent);
    let connector = tokio_rustls::TlsConnector::from(gse_core::tls::client_config(&files).unwrap());
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let name = ServerName::try_from(gse_core::certs::DEFAULT_SERVER_NAME).unwrap();
    let _client = connector.connect(name, tcp).await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(10), f.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.local, f.addr);
    assert!(accepted.deadline > Instant::now());
    assert!(accepted.peer_certificates().is_some_and(|c| !c.is_empty()));
    assert_eq!(f.pending.open(), 1, "pending until the hello is accepted");
    drop(accepted.pending);
    assert_eq!(f.pending.open(), 0);
}

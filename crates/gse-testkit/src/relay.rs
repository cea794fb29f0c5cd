//! A TCP relay on a free loopback port in front of another address,
//! optionally terminating TLS there (a TLS front for a broker that speaks
//! only plain TCP, as deployments put one), counting the bytes each client
//! sends through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gse_core::tls::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// See the module doc; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays `listener`'s connections to `target`, terminating TLS with
    /// `tls`'s certificate and key when given (no client certificate).
    pub fn start(
        listener: std::net::TcpListener,
        target: SocketAddr,
        tls: Option<&TlsFiles>,
    ) -> Relay {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let addr = listener.local_addr().expect("its address");
        let acceptor = tls.map(|files| {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&files.cert_file)
                    .expect("the relay's certificate")
                    .map(|c| c.expect("a certificate"))
                    .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key_file).expect("the relay's key");
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a server config");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let up = Arc::new(AtomicU64::new(0));
        let counted = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(client).await {
                                pipe(tls, server, counted).await;
                            }
                        }
                        None => pipe(client, server, counted).await,
                    }
                });
            }
        });
        Relay { addr, up, task }
    }

    /// Bytes clients sent through the relay so far.
    pub fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: impl AsyncRead + AsyncWrite, server: TcpStream, up: Arc<AtomicU64>) {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = server.into_split();
    let to_server = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            up.fetch_add(n as u64, Ordering::Relaxed);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut sw).await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut cw).await;
    };
    tokio::join!(to_server, to_client);
}

//! The server side of a handshake, remembering the name the client asked
//! for (issue 10).
//!
//! A refused handshake leaves the server only an alert; the name the
//! client connects with (SNI, in its ClientHello) is what tells a name
//! mismatch from a CA mismatch. tokio-rustls's `LazyConfigAcceptor` reads
//! the ClientHello first and then runs the usual handshake, so [`accept`]
//! keeps that name for [`AcceptError::explain`].

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::TlsFiles;
use super::explain::{Side, explain};

/// A server-side handshake that failed, and the name the client asked for.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AcceptError {
    /// What the TLS stream reported.
    pub error: io::Error,
    /// The DNS name the client sent (SNI); `None` when it sent none (it
    /// connects by IP address) or the ClientHello never arrived.
    pub sni: Option<String>,
}

impl AcceptError {
    /// [`explain`] as the server, with the name the client asked for.
    pub fn explain(&self, peer: &str, files: &TlsFiles) -> Option<String> {
        let side = Side::Server {
            sni: self.sni.as_deref(),
        };
        explain(side, peer, files, &self.error)
    }
}

/// Runs the server side of a TLS handshake on `io` with `config`. Bound
/// the whole of it with one timeout.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> Result<TlsStream<IO>, AcceptError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let start = LazyConfigAcceptor::new(Acceptor::default(), io)
        .await
        .map_err(|error| AcceptError { error, sni: None })?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    start
        .into_stream(config)
        .await
        .map_err(|error| AcceptError { error, sni })
}

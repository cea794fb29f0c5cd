//! Dialing: the client side of every link, the same for the agent's control
//! link, its data link and its P2P client (and next the node link and the
//! proxy's upstream).
//!
//! Start at [`Dialer::dial`]: resolve `host:port`, try each address from
//! the bind address if one is set (with TCP keepalive where asked), all
//! within the connect timeout, then the TLS handshake with the server name,
//! within the connect timeout again. A failure is a [`DialError`] that
//! knows what failed where: the connect's class ([`DialError::failure`],
//! for `net_hint`'s advice) and the TLS refusal in words
//! (`gse_core::tls::explain`). Each link puts it in its own words (what it
//! was dialing, where the address came from). Reconnect pacing is
//! [`crate::backoff`]'s; the hello after the handshake is the link's.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gse_core::tls::{Side, TlsFiles, explain};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::net_hint::{self, ConnectFailure};

/// TCP keepalive on the links that ask for it: idle time before the first
/// probe, and between probes.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// What [`Dialer::new`] needs.
pub struct DialerParts {
    pub tls: Arc<ClientConfig>,
    /// The files `tls` was loaded from, to explain refusals with.
    pub tls_files: TlsFiles,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// The local address to dial from; `None`: the system's choice.
    pub bind_ip: Option<IpAddr>,
    /// Time for the TCP connect, and again for the TLS handshake.
    pub connect_timeout: Duration,
    /// TCP keepalive on the connection (a long-lived link).
    pub keepalive: bool,
}

/// How one link dials its servers.
#[derive(Clone)]
pub struct Dialer {
    connector: TlsConnector,
    tls_files: TlsFiles,
    server_name: String,
    bind_ip: Option<IpAddr>,
    connect_timeout: Duration,
    keepalive: bool,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve {target}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("{target} resolved to no address")]
    NoAddress { target: String },
    #[error("cannot create a socket: {0}")]
    Socket(io::Error),
    #[error("cannot bind to {ip}: {source}")]
    Bind { ip: IpAddr, source: io::Error },
    #[error("TCP connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no TCP connection to {target} within {limit:?}")]
    ConnectTimeout { target: String, limit: Duration },
    #[error("server name {name:?} is not a valid name: {reason}")]
    ServerName { name: String, reason: String },
    /// The handshake failed; `explained` is the refusal in words when it
    /// was one.
    #[error("TLS with {target} failed: {source}")]
    Tls {
        target: String,
        source: io::Error,
        explained: Option<String>,
    },
    #[error("no TLS handshake with {target} within {limit:?}")]
    TlsTimeout { target: String, limit: Duration },
}

// === impl Dialer ===

impl Dialer {
    pub fn new(parts: DialerParts) -> Self {
        Dialer {
            connector: TlsConnector::from(parts.tls),
            tls_files: parts.tls_files,
            server_name: parts.server_name,
            bind_ip: parts.bind_ip,
            connect_timeout: parts.connect_timeout,
            keepalive: parts.keepalive,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// TCP, then TLS, to `target` (`host:port`); see the module doc.
    pub async fn dial(&self, target: &str) -> Result<TlsStream<TcpStream>, DialError> {
        let limit = self.connect_timeout;
        let tcp = timeout(limit, self.connect(target)).await.map_err(|_| {
            DialError::ConnectTimeout {
                target: target.to_string(),
                limit,
            }
        })??;
        self.handshake(target, tcp).await
    }

    /// A read or write error on a dialed stream in words, when it is a
    /// TLS refusal: in TLS 1.3 the server's refusal of our certificate
    /// shows only on the first read after the handshake.
    pub fn explain(&self, target: &str, e: &io::Error) -> Option<String> {
        explain(Side::Client, target, &self.tls_files, e)
    }

    /// Tries each address of `target` in turn; the last connect error if
    /// none answers.
    async fn connect(&self, target: &str) -> Result<TcpStream, DialError> {
        let addrs = tokio::net::lookup_host(target)
            .await
            .map_err(|source| DialError::Resolve {
                target: target.to_string(),
                source,
            })?;
        let mut last = DialError::NoAddress {
            target: target.to_string(),
        };
        for addr in addrs {
            match self.connect_addr(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e @ DialError::Connect { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn connect_addr(&self, addr: SocketAddr) -> Result<TcpStream, DialError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(DialError::Socket)?;
        if let Some(ip) = self.bind_ip {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|source| DialError::Bind { ip, source })?;
        }
        if self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_TIME)
                .with_interval(KEEPALIVE_INTERVAL);
            let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|source| DialError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn handshake(
        &self,
        target: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, DialError> {
        let name =
            ServerName::try_from(self.server_name.clone()).map_err(|e| DialError::ServerName {
                name: self.server_name.clone(),
                reason: e.to_string(),
            })?;
        let limit = self.connect_timeout;
        match timeout(limit, self.connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(source)) => Err(DialError::Tls {
                target: target.to_string(),
                explained: self.explain(target, &source),
                source,
            }),
            Err(_) => Err(DialError::TlsTimeout {
                target: target.to_string(),
                limit,
            }),
        }
    }
}

// === impl DialError ===

impl DialError {
    /// How the TCP connect failed, as far as advice goes (`net_hint`).
    pub fn failure(&self) -> ConnectFailure {
        match self {
            DialError::Connect { source, .. } => net_hint::classify(source),
            DialError::ConnectTimeout { .. } => ConnectFailure::Unanswered,
            _ => ConnectFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests;

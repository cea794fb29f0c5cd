//! Dialling a peer: TCP, mutual TLS (the peer must present an agent
//! certificate, name [`PEER_SERVER_NAME`](super::PEER_SERVER_NAME); the
//! [`Dialer`] is `FileService::peer_dialer`), `PeerHello`, `PeerHelloAck`.
//! What to request over the connection is the swarm's business.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use gse_link::net_hint::{self, ConnectFailure};
use gse_link::{DialError, Dialer};
use gse_proto::link::{PeerHello, PeerHelloAck};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

use super::{Outgoing, peer_codec, write_outgoing};

/// The read side of a peer connection, framed.
pub type PeerReader = FramedRead<ReadHalf<TlsStream<TcpStream>>, FrameCodec>;
/// The write side of a peer connection.
pub type PeerWriter = WriteHalf<TlsStream<TcpStream>>;

/// Why a peer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to peer {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "TLS handshake with peer {addr} failed: {source}; check that both agents' certificates come from the same CA"
    )]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {addr} did not answer within {limit:?}")]
    Timeout { addr: SocketAddr, limit: Duration },
    #[error("peer {addr} refused us: {message}")]
    Refused { addr: SocketAddr, message: String },
    #[error("peer {addr} broke the protocol: {message}")]
    Protocol { addr: SocketAddr, message: String },
}

impl PeerError {
    /// A failed dial of the peer at `addr`.
    fn dial(addr: SocketAddr, e: DialError) -> Self {
        match e {
            DialError::ConnectTimeout { limit, .. } | DialError::TlsTimeout { limit, .. } => {
                PeerError::Timeout { addr, limit }
            }
            DialError::Tls { source, .. } => PeerError::Tls { addr, source },
            DialError::Connect { source, .. }
            | DialError::Resolve { source, .. }
            | DialError::Socket(source)
            | DialError::Bind { source, .. } => PeerError::Connect { addr, source },
            other @ (DialError::NoAddress { .. } | DialError::ServerName { .. }) => {
                PeerError::Connect {
                    addr,
                    source: std::io::Error::other(other.to_string()),
                }
            }
        }
    }

    /// The error with what to check, for a failed connect or no answer
    /// (see [`net_hint`]): the peer's listener, or the route to it.
    pub fn explained(&self) -> String {
        let failure = match self {
            PeerError::Connect { source, .. } => net_hint::classify(source),
            PeerError::Timeout { .. } => ConnectFailure::Unanswered,
            _ => ConnectFailure::Other,
        };
        let addr = match self {
            PeerError::Connect { addr, .. } | PeerError::Timeout { addr, .. } => addr.to_string(),
            _ => String::new(),
        };
        let unanswered = "is that agent's P2P listener reachable at this address? check [file] p2p_listen / p2p_advertise on it";
        match net_hint::hint(failure, &addr, unanswered) {
            Some(h) => format!("{self} ({h})"),
            None => self.to_string(),
        }
    }
}

/// Connects to the peer at `addr` and says `hello`, all within the
/// dialer's connect timeout.
pub async fn connect(
    dialer: &Dialer,
    addr: SocketAddr,
    hello: &PeerHello,
) -> Result<(PeerHelloAck, PeerReader, PeerWriter), PeerError> {
    let limit = dialer.connect_timeout();
    timeout(limit, connect_inner(dialer, addr, hello))
        .await
        .map_err(|_| PeerError::Timeout { addr, limit })?
}

async fn connect_inner(
    dialer: &Dialer,
    addr: SocketAddr,
    hello: &PeerHello,
) -> Result<(PeerHelloAck, PeerReader, PeerWriter), PeerError> {
    let tls = dialer
        .dial(&addr.to_string())
        .await
        .map_err(|e| PeerError::dial(addr, e))?;
    let (rd, mut wr) = tokio::io::split(tls);
    let frame = Frame::new(MsgType::PeerHello, 0, hello);
    let protocol = |message: String| PeerError::Protocol { addr, message };
    write_outgoing(&mut wr, Outgoing::Frame(frame))
        .await
        .map_err(|source| PeerError::Tls { addr, source })?;
    tokio::io::AsyncWriteExt::flush(&mut wr)
        .await
        .map_err(|source| PeerError::Tls { addr, source })?;
    let mut reader = FramedRead::new(rd, peer_codec());
    let ack: PeerHelloAck = match reader.next().await {
        Some(Ok(f)) if f.msg_type == MsgType::PeerHelloAck => {
            f.decode().map_err(|e| protocol(e.to_string()))?
        }
        Some(Ok(f)) => {
            return Err(protocol(format!(
                "answered PeerHello with type {:#x}",
                f.msg_type.to_u16()
            )));
        }
        // In TLS 1.3 a refused client certificate shows on the first read.
        Some(Err(gse_proto::FrameError::Io(source))) => {
            return Err(PeerError::Tls { addr, source });
        }
        Some(Err(e)) => return Err(protocol(e.to_string())),
        None => return Err(protocol("closed the connection after PeerHello".into())),
    };
    if !ack.accepted {
        return Err(PeerError::Refused {
            addr,
            message: ack.message,
        });
    }
    Ok((ack, reader, wr))
}

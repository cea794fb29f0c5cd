//! Dialling a peer: TCP, mutual TLS (the peer must present an agent
//! certificate, name [`PEER_SERVER_NAME`]), `PeerHello`, `PeerHelloAck`.
//! What to request over the connection is the swarm's business.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use gse_proto::link::{PeerHello, PeerHelloAck};
use gse_proto::{Frame, FrameCodec, MsgType};
use rustls::pki_types::ServerName;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

use super::{Outgoing, PEER_SERVER_NAME, peer_codec, write_outgoing};
use crate::net_hint::{self, ConnectFailure};

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

/// Connects to the peer at `addr` and says `hello`, all within `limit`.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    hello: &PeerHello,
    limit: Duration,
) -> Result<(PeerHelloAck, PeerReader, PeerWriter), PeerError> {
    timeout(limit, connect_inner(connector, addr, hello))
        .await
        .map_err(|_| PeerError::Timeout { addr, limit })?
}

async fn connect_inner(
    connector: &TlsConnector,
    addr: SocketAddr,
    hello: &PeerHello,
) -> Result<(PeerHelloAck, PeerReader, PeerWriter), PeerError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| PeerError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(PEER_SERVER_NAME).expect("a valid DNS name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|source| PeerError::Tls { addr, source })?;
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

//! The plugin-message socket (COMPAT §1.3): hosted plugins built on the
//! GSE SDK (and bkmonitorbeat's tenant client) connect to
//! `ipc.state.message` and speak 28-byte big-endian headers with magic
//! `0xDEADBEEF`, version 6.
//!
//! Start at [`MessageServer::start`] (or [`MessageServer::bind`]), then
//! [`MessageServer::run`]. A keepalive (0x9006) is answered with 0x9007
//! carrying the agent's identity and status (`{agent_id, version,
//! cloud_id, run_mode, status_code, status}`), echoing the request's
//! sequence; the SDK counts itself authorised after the first one. Respond
//! messages (0x900a) are checked and counted; forwarding them to a server
//! callback is not implemented. A bad magic, a length under 28 or over
//! `plugin.max_message_bytes` closes that connection only. Frames are
//! [`MessageCodec`].
//!
//! The socket is open to every local user (plugins run as other users),
//! who are not trusted, so what they hold is bounded as on the data socket
//! (`local_socket`): at most `plugin.max_message_connections` at once
//! (further ones wait in the listen backlog) and
//! `plugin.max_message_connections_per_uid` of one non-root user (further
//! ones are closed at once); unfinished large frames only within a budget;
//! and a connection that completes no frame for [`IDLE_TIMEOUT`] (20
//! keepalive periods) is closed. `plugin.message_ipc_links` are made at
//! start and removed at stop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::local_socket::admission::{Admission, Conn, ConnLimits, Names, Slot};
use super::local_socket::links::Links;
use super::local_socket::reader::{FrameReader, ReadEnd};
use super::local_socket::{SocketError, SocketFile, SocketOptions};
use crate::plugin::config::{
    DEFAULT_MAX_MESSAGE_CONNECTIONS, DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID,
};

/// First four bytes of every frame.
pub const MAGIC: u32 = 0xDEAD_BEEF;
/// Protocol version this agent speaks.
pub const VERSION: u16 = 6;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 28;
/// Plugin -> agent keepalive.
pub const KEEPALIVE_REQ: u16 = 0x9006;
/// Agent -> plugin keepalive answer.
pub const KEEPALIVE_RESP: u16 = 0x9007;
/// Agent -> plugin dispatched message.
pub const DISPATCH_MESSAGE: u16 = 0x9008;
/// Plugin -> agent message for the server.
pub const RESPOND_MESSAGE: u16 = 0x900a;
/// Socket file mode: plugins run as other users.
const SOCKET_MODE: u32 = 0o666;
/// A connection that completes no frame for this long is closed; the SDK
/// sends a keepalive every 3 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reply may take to write.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    pub proto_type: u16,
    pub version: u16,
    pub sequence: u64,
    /// Whole frame, header included.
    pub length: u32,
    pub reserved0: u32,
    pub reserved1: u32,
}

/// One frame: header and body (`length - 28` bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFrame {
    pub header: MessageHeader,
    pub body: Bytes,
}

impl MessageFrame {
    /// A frame of `proto_type` with `body`; length and version filled in,
    /// reserved fields 0.
    pub fn new(proto_type: u16, sequence: u64, body: Bytes) -> Self {
        MessageFrame {
            header: MessageHeader {
                proto_type,
                version: VERSION,
                sequence,
                length: (HEADER_LEN + body.len()) as u32,
                reserved0: 0,
                reserved1: 0,
            },
            body,
        }
    }
}

/// Why a byte stream is not valid plugin-message frames.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(
        "bad magic 0x{0:08x} (expected 0xdeadbeef): the peer does not speak the plugin-message protocol"
    )]
    BadMagic(u32),
    #[error("frame length {0} is shorter than the 28-byte header")]
    TooShort(u32),
    #[error("frame of {len} bytes is over the limit of {max} (plugin.max_message_bytes)")]
    TooLarge { len: u32, max: u32 },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// tokio codec for [`MessageFrame`]s, bounded by a total frame size.
#[derive(Clone, Debug)]
pub struct MessageCodec {
    max: u32,
}

impl MessageCodec {
    pub fn new(max_frame_bytes: u32) -> Self {
        MessageCodec {
            max: max_frame_bytes,
        }
    }

    /// The whole length the frame at the start of `src` claims, once its
    /// header is there.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        let field = src.get(16..20)?;
        Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]) as usize)
    }
}

/// Parses the first [`HEADER_LEN`] bytes of `buf`.
pub fn parse_header(mut buf: &[u8]) -> Result<MessageHeader, MessageError> {
    let magic = buf.get_u32();
    if magic != MAGIC {
        return Err(MessageError::BadMagic(magic));
    }
    Ok(MessageHeader {
        proto_type: buf.get_u16(),
        version: buf.get_u16(),
        sequence: buf.get_u64(),
        length: buf.get_u32(),
        reserved0: buf.get_u32(),
        reserved1: buf.get_u32(),
    })
}

impl Decoder for MessageCodec {
    type Item = MessageFrame;
    type Error = MessageError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<MessageFrame>, MessageError> {
        if src.len() < 4 {
            return Ok(None);
        }
        // Check the magic as soon as it is there: a stranger is cut off at once.
        let magic = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if magic != MAGIC {
            return Err(MessageError::BadMagic(magic));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(&src[..HEADER_LEN])?;
        if (header.length as usize) < HEADER_LEN {
            return Err(MessageError::TooShort(header.length));
        }
        if header.length > self.max {
            return Err(MessageError::TooLarge {
                len: header.length,
                max: self.max,
            });
        }
        let total = header.length as usize;
        if src.len() < total {
            // No `reserve` for what the header claims: the reader grows the
            // buffer as bytes arrive (`local_socket::reader`).
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(total - HEADER_LEN).freeze();
        Ok(Some(MessageFrame { header, body }))
    }
}

impl Encoder<MessageFrame> for MessageCodec {
    type Error = MessageError;

    fn encode(&mut self, f: MessageFrame, dst: &mut BytesMut) -> Result<(), MessageError> {
        let h = f.header;
        dst.reserve(HEADER_LEN + f.body.len());
        dst.put_u32(MAGIC);
        dst.put_u16(h.proto_type);
        dst.put_u16(h.version);
        dst.put_u64(h.sequence);
        dst.put_u32((HEADER_LEN + f.body.len()) as u32);
        dst.put_u32(h.reserved0);
        dst.put_u32(h.reserved1);
        dst.extend_from_slice(&f.body);
        Ok(())
    }
}

/// The body of a keepalive answer (0x9007).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeepaliveAnswer {
    pub agent_id: String,
    pub version: String,
    pub cloud_id: i64,
    /// 1 agent, 0 proxy (the SDK's `IsProxy()` is `run_mode == 0`).
    pub run_mode: u32,
    /// SDK AgentStatus: 2 running.
    pub status_code: i32,
    pub status: String,
}

impl KeepaliveAnswer {
    /// The answer of a running agent.
    pub fn running(agent_id: &str, cloud_id: i64) -> Self {
        KeepaliveAnswer {
            agent_id: agent_id.to_string(),
            version: gse_core::VERSION.to_string(),
            cloud_id,
            run_mode: 1,
            status_code: 2,
            status: "running".into(),
        }
    }
}

/// Why the socket could not be served.
pub type MessageServerError = SocketError;

/// A bound plugin-message socket.
pub struct MessageServer {
    listener: UnixListener,
    file: SocketFile,
    links: Links,
    answer: Arc<Bytes>,
    max: u32,
    limits: ConnLimits,
}

// === impl MessageServer ===

impl MessageServer {
    /// Binds the socket `[plugin]` names and makes its links; a failure is
    /// logged and the agent goes on without the socket.
    pub fn start(
        cfg: &crate::AgentConfig,
        identity: &crate::identity::AgentIdentity,
    ) -> Option<MessageServer> {
        let plugin = &cfg.plugin;
        let path = plugin.message_ipc(&cfg.agent.data_dir);
        let answer = KeepaliveAnswer::running(&identity.agent_id, identity.cloud_id);
        match MessageServer::bind(&path, answer, plugin.max_message_bytes) {
            Ok(server) => Some(
                server
                    .with_max_connections(plugin.max_message_connections)
                    .with_max_connections_per_uid(plugin.max_message_connections_per_uid)
                    .with_links(&plugin.message_ipc_links),
            ),
            Err(e) => {
                tracing::error!(error = %e, "plugin-message socket not available");
                None
            }
        }
    }

    /// Binds `path` (removing a stale socket nobody listens on).
    pub fn bind(
        path: &Path,
        answer: KeepaliveAnswer,
        max_frame_bytes: u32,
    ) -> Result<Self, MessageServerError> {
        let opts = SocketOptions {
            mode: SOCKET_MODE,
            group: String::new(),
            key: "plugin.message_ipc",
        };
        let (listener, file) = SocketFile::bind(path, &opts)?;
        let body = serde_json::to_vec(&answer).expect("the keepalive answer serialises");
        Ok(MessageServer {
            listener,
            file,
            links: Links::default(),
            answer: Arc::new(Bytes::from(body)),
            max: max_frame_bytes,
            limits: ConnLimits {
                max_connections: DEFAULT_MAX_MESSAGE_CONNECTIONS,
                max_connections_per_uid: DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID,
                idle_timeout: IDLE_TIMEOUT,
                max_frame: max_frame_bytes as usize,
            },
        })
    }

    /// At most `n` (at least 1) connections are served at once; further
    /// ones wait until one closes.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// At most `n` connections of one non-root user at once.
    pub fn with_max_connections_per_uid(mut self, n: usize) -> Self {
        self.limits.max_connections_per_uid = n.max(1);
        self
    }

    /// Closes a connection that completes no frame for `idle`.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.limits.idle_timeout = idle;
        self
    }

    /// Makes `links` symlinks to the socket now; removed when `run` ends.
    pub fn with_links(mut self, links: &[PathBuf]) -> Self {
        self.links = Links::make(self.file.path(), links, "plugin.message_ipc_links");
        self
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Serves connections until `shutdown`; then removes the socket file
    /// and its links.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(path = %self.file.path().display(), max_connections = self.limits.max_connections, max_connections_per_uid = self.limits.max_connections_per_uid, "plugin-message socket listening");
        let admission = Admission::new(
            Names {
                socket: "plugin-message socket",
                per_uid_key: "plugin.max_message_connections_per_uid",
            },
            self.limits.clone(),
        );
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = admission.accept(&self.listener) => a,
            };
            match accepted {
                Ok(conn) => {
                    let c = Connection {
                        answer: self.answer.clone(),
                        max: self.max,
                        idle_timeout: self.limits.idle_timeout,
                    };
                    tokio::spawn(c.serve(conn, shutdown.child_token()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a plugin-message connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        self.file.remove();
        self.links.remove();
    }
}

/// One plugin's connection.
struct Connection {
    answer: Arc<Bytes>,
    max: u32,
    idle_timeout: Duration,
}

/// Why a plugin-message connection ended.
enum End {
    Closed,
    Idle,
    Bad(MessageError),
}

impl Connection {
    async fn serve(self, conn: Conn, shutdown: CancellationToken) {
        let Conn { stream, peer, slot } = conn;
        let end = tokio::select! {
            _ = shutdown.cancelled() => return,
            end = self.pump(stream, &slot) => end,
        };
        match end {
            End::Closed => {}
            End::Idle => tracing::debug!(
                %peer,
                idle = ?self.idle_timeout,
                "closing a plugin-message connection that sent no frame in time"
            ),
            End::Bad(MessageError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "a plugin-message connection went away")
            }
            End::Bad(e) => tracing::warn!(%peer, error = %e, "closing a plugin-message connection"),
        }
    }

    /// Answers frames until the connection ends, reading within the
    /// connection's budget and idle timeout.
    async fn pump(&self, stream: UnixStream, slot: &Slot) -> End {
        let (mut rd, mut wr) = stream.into_split();
        let mut codec = MessageCodec::new(self.max);
        let mut reader = FrameReader::new(self.idle_timeout);
        let mut out = BytesMut::new();
        loop {
            loop {
                match codec.decode(reader.buf()) {
                    Ok(Some(frame)) => {
                        reader.progress();
                        if let Some(reply) = self.on_frame(&frame) {
                            codec.encode(reply, &mut out).expect("encoding never fails");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Bad(e),
                }
            }
            if !out.is_empty() {
                let written = tokio::time::timeout(REPLY_WRITE_TIMEOUT, wr.write_all(&out)).await;
                match written {
                    Ok(Ok(())) => out.clear(),
                    Ok(Err(e)) => return End::Bad(MessageError::Io(e)),
                    Err(_) => {
                        let late = io::Error::new(io::ErrorKind::TimedOut, "reply write timed out");
                        return End::Bad(MessageError::Io(late));
                    }
                }
            }
            let head = codec.frame_len(reader.buf());
            match reader.fill(&mut rd, slot, head).await {
                Ok(0) => return End::Closed,
                Ok(_) => {}
                Err(ReadEnd::Idle(_)) => return End::Idle,
                Err(ReadEnd::Io(e)) => return End::Bad(MessageError::Io(e)),
            }
        }
    }

    fn on_frame(&self, frame: &MessageFrame) -> Option<MessageFrame> {
        let h = frame.header;
        match h.proto_type {
            KEEPALIVE_REQ => {
                let plugin = plugin_name(&frame.body);
                tracing::debug!(plugin = %plugin, "plugin keepalive");
                Some(MessageFrame::new(
                    KEEPALIVE_RESP,
                    h.sequence,
                    (*self.answer).clone(),
                ))
            }
            RESPOND_MESSAGE => {
                let parts_ok = h.reserved0 > 0
                    && u64::from(h.reserved0) + u64::from(h.reserved1) == frame.body.len() as u64;
                tracing::debug!(
                    well_formed = parts_ok,
                    "plugin message for the server; forwarding upstream is not implemented, dropped"
                );
                None
            }
            other => {
                tracing::debug!(
                    proto_type = other,
                    "ignoring a plugin-message frame of an unknown type"
                );
                None
            }
        }
    }
}

/// `plugin_name` of a keepalive body, for the log; "?" when absent.
fn plugin_name(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("plugin_name")?
                .as_str()
                .map(|s| s.chars().take(64).collect())
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests;

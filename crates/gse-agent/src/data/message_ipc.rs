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
//! keepalive periods) is closed. Replies wait unwritten up to
//! [`MAX_PENDING_REPLIES`] bytes: past that, decoding stops until they are
//! written, so pipelined keepalives from a client that never reads cannot
//! grow the agent. `plugin.message_ipc_links` are made at start and removed
//! at stop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

pub use self::codec::*;

use super::config::ROOT_RESERVE_DIVISOR;
use super::local_socket::admission::{Admission, Conn, ConnLimits, Names, Slot};
use super::local_socket::links::Links;
use super::local_socket::reader::{FrameReader, ReadEnd};
use super::local_socket::{SocketError, SocketFile, SocketOptions};
use crate::plugin::config::{
    DEFAULT_MAX_MESSAGE_CONNECTIONS, DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID,
};

/// Socket file mode: plugins run as other users.
const SOCKET_MODE: u32 = 0o666;
/// A connection that completes no frame for this long is closed; the SDK
/// sends a keepalive every 3 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reply may take to write.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reply bytes one connection buffers at most before writing them (about
/// 90 keepalive answers).
pub const MAX_PENDING_REPLIES: usize = 16 * 1024;

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
                root_reserve: DEFAULT_MAX_MESSAGE_CONNECTIONS / ROOT_RESERVE_DIVISOR,
                idle_timeout: IDLE_TIMEOUT,
                max_frame: max_frame_bytes as usize,
            },
        })
    }

    /// At most `n` (at least 1) connections are served at once; further
    /// ones wait until one closes.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self.limits.root_reserve = self.limits.max_connections / ROOT_RESERVE_DIVISOR;
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
                reserve_key: "a quarter of plugin.max_message_connections",
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
    /// connection's budget and idle timeout. At most [`MAX_PENDING_REPLIES`]
    /// bytes of replies wait before they are written: decoding (and so
    /// reading) stops until they are, so a client that pipelines keepalives
    /// and never reads holds one such buffer, and then the write timeout
    /// closes it.
    async fn pump(&self, stream: UnixStream, slot: &Slot) -> End {
        let (mut rd, mut wr) = stream.into_split();
        let mut codec = MessageCodec::new(self.max);
        let mut reader = FrameReader::new(self.idle_timeout);
        let mut out = BytesMut::new();
        loop {
            match self.answer_some(&mut codec, reader.buf(), &mut out) {
                Ok(0) => {}
                Ok(_) => reader.progress(),
                Err(e) => return End::Bad(e),
            }
            if !out.is_empty() {
                // Frames may be left in the buffer: decode again first.
                match write_replies(&mut wr, &mut out).await {
                    Ok(()) => continue,
                    Err(e) => return End::Bad(MessageError::Io(e)),
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

    /// Decodes the complete frames in `buf` and encodes their replies into
    /// `out`, stopping once `out` holds [`MAX_PENDING_REPLIES`] bytes (what
    /// is left stays in `buf`). Returns the frames decoded.
    fn answer_some(
        &self,
        codec: &mut MessageCodec,
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<usize, MessageError> {
        let mut frames = 0;
        while out.len() < MAX_PENDING_REPLIES {
            let Some(frame) = codec.decode(buf)? else {
                break;
            };
            frames += 1;
            if let Some(reply) = self.on_frame(&frame) {
                codec.encode(reply, out).expect("encoding never fails");
            }
        }
        Ok(frames)
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

/// Writes the buffered replies (within [`REPLY_WRITE_TIMEOUT`]) and empties
/// `out`.
async fn write_replies(wr: &mut OwnedWriteHalf, out: &mut BytesMut) -> io::Result<()> {
    match tokio::time::timeout(REPLY_WRITE_TIMEOUT, wr.write_all(out)).await {
        Ok(Ok(())) => {
            out.clear();
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "reply write timed out",
        )),
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

mod codec;
#[cfg(test)]
mod tests;

//! The socket side of plugin messages (Unix: a Unix socket with peer
//! credentials); see the module doc of [`super`].

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

use super::codec::*;
use super::hub::{self, MessageHub, Speakers};

use crate::data::config::ROOT_RESERVE_DIVISOR;
use crate::data::local_socket::admission::{Admission, Conn, ConnLimits, Names, Slot};
use crate::data::local_socket::links::Links;
use crate::data::local_socket::reader::{FrameReader, ReadEnd};
use crate::data::local_socket::{SocketError, SocketFile, SocketOptions};
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
    hub: Arc<MessageHub>,
}

// === impl MessageServer ===

impl MessageServer {
    /// Binds the socket `[plugin]` names and makes its links; a failure is
    /// logged and the agent goes on without the socket.
    pub fn start(
        cfg: &crate::AgentConfig,
        identity: &crate::identity::AgentIdentity,
        hub: Arc<MessageHub>,
    ) -> Option<MessageServer> {
        let plugin = &cfg.plugin;
        let path = plugin.message_ipc(&cfg.agent.data_dir);
        let answer = KeepaliveAnswer::running(&identity.agent_id, identity.cloud_id);
        match MessageServer::bind(&path, answer, plugin.max_message_bytes) {
            Ok(server) => Some(
                server
                    .with_hub(hub)
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
            hub: Arc::new(MessageHub::new(Speakers::default_only())),
            limits: ConnLimits {
                max_connections: DEFAULT_MAX_MESSAGE_CONNECTIONS,
                max_connections_per_uid: DEFAULT_MAX_MESSAGE_CONNECTIONS_PER_UID,
                root_reserve: DEFAULT_MAX_MESSAGE_CONNECTIONS / ROOT_RESERVE_DIVISOR,
                idle_timeout: IDLE_TIMEOUT,
                max_frame: max_frame_bytes as usize,
            },
        })
    }

    /// Messages go through `hub` (shared with the agent's link).
    pub fn with_hub(mut self, hub: Arc<MessageHub>) -> Self {
        self.hub = hub;
        self
    }

    pub fn hub(&self) -> &Arc<MessageHub> {
        &self.hub
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
                        hub: self.hub.clone(),
                        id: self.hub.conn_id(),
                        may_speak: self.hub.speakers().may_speak(conn.peer.uid),
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
    hub: Arc<MessageHub>,
    id: u64,
    /// Its peer may speak for a plugin ([`Speakers`]).
    may_speak: bool,
}

/// What a connection became as it went.
#[derive(Default)]
struct Speaking {
    /// The plugin its last keepalive named, once it listens as it.
    name: Option<String>,
    /// The server's messages for it.
    push: Option<tokio::sync::mpsc::Receiver<MessageFrame>>,
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
            _ = shutdown.cancelled() => None,
            end = self.pump(stream, &slot) => Some(end),
        };
        self.hub.forget(self.id);
        match end {
            None | Some(End::Closed) => {}
            Some(End::Idle) => tracing::debug!(
                %peer,
                idle = ?self.idle_timeout,
                "closing a plugin-message connection that sent no frame in time"
            ),
            Some(End::Bad(MessageError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "a plugin-message connection went away")
            }
            Some(End::Bad(e)) => {
                tracing::warn!(%peer, error = %e, "closing a plugin-message connection")
            }
        }
    }

    /// Answers frames and writes the server's messages until the
    /// connection ends, reading within the connection's budget and idle
    /// timeout. At most [`MAX_PENDING_REPLIES`] bytes of replies wait
    /// before they are written: decoding (and so reading) stops until they
    /// are, so a client that pipelines keepalives and never reads holds one
    /// such buffer, and then the write timeout closes it.
    async fn pump(&self, stream: UnixStream, slot: &Slot) -> End {
        let (mut rd, mut wr) = stream.into_split();
        let mut codec = MessageCodec::new(self.max);
        let mut reader = FrameReader::new(self.idle_timeout);
        let mut out = BytesMut::new();
        let mut speaking = Speaking::default();
        loop {
            match self.answer_some(&mut codec, reader.buf(), &mut out, &mut speaking) {
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
            tokio::select! {
                read = reader.fill(&mut rd, slot, head) => match read {
                    Ok(0) => return End::Closed,
                    Ok(_) => {}
                    Err(ReadEnd::Idle(_)) => return End::Idle,
                    Err(ReadEnd::Io(e)) => return End::Bad(MessageError::Io(e)),
                },
                pushed = next_push(&mut speaking.push) => match pushed {
                    Some(frame) => codec.encode(frame, &mut out).expect("encoding never fails"),
                    None => speaking.push = None,
                },
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
        speaking: &mut Speaking,
    ) -> Result<usize, MessageError> {
        let mut frames = 0;
        while out.len() < MAX_PENDING_REPLIES {
            let Some(frame) = codec.decode(buf)? else {
                break;
            };
            frames += 1;
            if let Some(reply) = self.on_frame(&frame, speaking) {
                codec.encode(reply, out).expect("encoding never fails");
            }
        }
        Ok(frames)
    }

    fn on_frame(&self, frame: &MessageFrame, speaking: &mut Speaking) -> Option<MessageFrame> {
        let h = frame.header;
        match h.proto_type {
            KEEPALIVE_REQ => {
                let plugin = plugin_name(&frame.body);
                tracing::debug!(plugin = ?plugin, "plugin keepalive");
                self.listen_as(plugin, speaking);
                Some(MessageFrame::new(
                    KEEPALIVE_RESP,
                    h.sequence,
                    (*self.answer).clone(),
                ))
            }
            RESPOND_MESSAGE => {
                if !self.may_speak {
                    tracing::warn!(
                        plugin = ?speaking.name,
                        "a plugin message from a local user that may not speak for plugins is dropped (root, the agent's user and plugin.message_users may)"
                    );
                    return None;
                }
                let parts = (h.reserved0, h.reserved1);
                if let Err(e) = self
                    .hub
                    .respond(speaking.name.as_deref(), parts, &frame.body)
                {
                    tracing::warn!(error = %e, "a plugin message for the server is not valid; dropped");
                }
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

    /// The connection speaks for `plugin` from now on, if its peer may.
    fn listen_as(&self, plugin: Option<String>, speaking: &mut Speaking) {
        let Some(plugin) = plugin.filter(|_| self.may_speak) else {
            return;
        };
        if speaking.name.as_deref() != Some(plugin.as_str()) {
            speaking.push = Some(self.hub.listen(&plugin, self.id));
            speaking.name = Some(plugin);
        }
    }
}

/// The next frame the server sent the connection's plugin; never, while
/// it listens as none.
async fn next_push(
    push: &mut Option<tokio::sync::mpsc::Receiver<MessageFrame>>,
) -> Option<MessageFrame> {
    match push {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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

/// `plugin_name` of a keepalive body, if it names one of at most
/// [`hub::MAX_NAME`] bytes.
fn plugin_name(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Keepalive {
        #[serde(default)]
        plugin_name: String,
    }
    serde_json::from_slice::<Keepalive>(body)
        .ok()
        .map(|k| k.plugin_name)
        .filter(|n| !n.is_empty() && n.len() <= hub::MAX_NAME)
}

// The tests drive the socket, so they see the server's module.
#[cfg(test)]
#[path = "tests.rs"]
mod tests;

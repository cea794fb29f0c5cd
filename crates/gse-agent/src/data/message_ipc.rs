//! The plugin-message socket (COMPAT §1.3): hosted plugins built on the
//! GSE SDK (and bkmonitorbeat's tenant client) connect to
//! `ipc.state.message` and speak 28-byte big-endian headers with magic
//! `0xDEADBEEF`, version 6.
//!
//! Start at [`MessageServer::bind`], then [`MessageServer::run`]. A
//! keepalive (0x9006) is answered with 0x9007 carrying the agent's identity
//! and status (`{agent_id, version, cloud_id, run_mode, status_code,
//! status}`), echoing the request's sequence; the SDK counts itself
//! authorised after the first one. Respond messages (0x900a) are checked
//! and counted; forwarding them to a server callback is not implemented.
//! A bad magic, a length under 28 or over `plugin.max_message_bytes`
//! closes that connection only. The socket is open to every local user
//! (plugins run as other users), so connections are bounded: at most
//! `plugin.max_message_connections` at once (further ones wait in the
//! listen backlog), and one that completes no frame for
//! [`IDLE_TIMEOUT`] (20 keepalive periods) is closed. Frames are
//! [`MessageCodec`].

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

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
            src.reserve(total - src.len());
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
#[derive(Debug, thiserror::Error)]
pub enum MessageServerError {
    #[error("cannot create the directory of the plugin-message socket {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "{path} exists and is not a socket; remove it or set plugin.message_ipc to another path"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "{path} is in use by another listener (is another agent running?); stop it or set plugin.message_ipc"
    )]
    InUse { path: PathBuf },
    #[error("cannot bind the plugin-message socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// A bound plugin-message socket.
pub struct MessageServer {
    listener: UnixListener,
    path: PathBuf,
    answer: Arc<Bytes>,
    max: u32,
    max_connections: usize,
    idle_timeout: Duration,
}

// === impl MessageServer ===

impl MessageServer {
    /// Binds `path` (removing a stale socket nobody listens on).
    pub fn bind(
        path: &Path,
        answer: KeepaliveAnswer,
        max_frame_bytes: u32,
    ) -> Result<Self, MessageServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| MessageServerError::CreateDir {
                path: dir.into(),
                source,
            })?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(MessageServerError::NotASocket { path: path.into() });
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(MessageServerError::InUse { path: path.into() });
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| MessageServerError::Bind {
            path: path.into(),
            source,
        })?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE));
        let body = serde_json::to_vec(&answer).expect("the keepalive answer serialises");
        Ok(MessageServer {
            listener,
            path: path.into(),
            answer: Arc::new(Bytes::from(body)),
            max: max_frame_bytes,
            max_connections: crate::plugin::config::DEFAULT_MAX_MESSAGE_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
        })
    }

    /// At most `n` (at least 1) connections are served at once; further
    /// ones wait until one closes.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Closes a connection that completes no frame for `idle`.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown`; then removes the socket file.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(path = %self.path.display(), max_connections = self.max_connections, "plugin-message socket listening");
        let limit = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = accept_with_permit(&self.listener, &limit) => a,
            };
            match accepted {
                Ok((stream, permit)) => {
                    let conn = Connection {
                        answer: self.answer.clone(),
                        max: self.max,
                        idle_timeout: self.idle_timeout,
                        _permit: permit,
                    };
                    tokio::spawn(conn.serve(stream, shutdown.child_token()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a plugin-message connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept_with_permit(
    listener: &UnixListener,
    limit: &Arc<Semaphore>,
) -> io::Result<(UnixStream, OwnedSemaphorePermit)> {
    let permit = limit
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// One plugin's connection; holds its slot until it ends.
struct Connection {
    answer: Arc<Bytes>,
    max: u32,
    idle_timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, stream: UnixStream, shutdown: CancellationToken) {
        let mut framed = Framed::new(stream, MessageCodec::new(self.max));
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = tokio::time::timeout(self.idle_timeout, framed.next()) => n,
            };
            let Ok(next) = next else {
                tracing::debug!(
                    idle = ?self.idle_timeout,
                    "closing a plugin-message connection that sent no frame in time"
                );
                return;
            };
            let frame = match next {
                None => return,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "closing a plugin-message connection");
                    return;
                }
            };
            if let Some(reply) = self.on_frame(&frame)
                && let Err(e) = framed.send(reply).await
            {
                tracing::debug!(error = %e, "a plugin-message connection went away");
                return;
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
mod tests {
    use super::*;

    fn encode(f: MessageFrame) -> BytesMut {
        let mut b = BytesMut::new();
        MessageCodec::new(1024).encode(f, &mut b).unwrap();
        b
    }

    #[test]
    fn header_layout_is_big_endian_and_length_counts_the_header() {
        let b = encode(MessageFrame::new(
            KEEPALIVE_RESP,
            0x0102,
            Bytes::from_static(b"{}"),
        ));
        assert_eq!(&b[0..4], &[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(&b[4..6], &[0x90, 0x07]);
        assert_eq!(&b[6..8], &[0, 6]);
        assert_eq!(&b[8..16], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&b[16..20], &30u32.to_be_bytes());
        assert_eq!(b.len(), 30);
    }

    #[test]
    fn round_trip_and_partial_input() {
        let frame = MessageFrame::new(KEEPALIVE_REQ, 9, Bytes::from_static(b"{\"pid\":1}"));
        let full = encode(frame.clone());
        let mut codec = MessageCodec::new(1024);
        for cut in [0, 3, 4, 27, 28, full.len() - 1] {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(codec.decode(&mut part).unwrap().is_none(), "cut {cut}");
        }
        let mut all = full.clone();
        assert_eq!(codec.decode(&mut all).unwrap(), Some(frame));
        assert!(all.is_empty());
    }

    #[test]
    fn bad_magic_short_and_oversized_frames_are_errors() {
        let mut codec = MessageCodec::new(64);
        let mut b = encode(MessageFrame::new(KEEPALIVE_REQ, 1, Bytes::new()));
        b[0] = 0;
        assert!(matches!(
            codec.decode(&mut b),
            Err(MessageError::BadMagic(_))
        ));
        // Refused as soon as four bytes show the wrong magic.
        let mut b = BytesMut::from(&b"GET / HTTP/1.1"[..4]);
        assert!(matches!(
            codec.decode(&mut b),
            Err(MessageError::BadMagic(_))
        ));
        let mut b = encode(MessageFrame::new(KEEPALIVE_REQ, 1, Bytes::new()));
        b[16..20].copy_from_slice(&10u32.to_be_bytes());
        assert!(matches!(
            codec.decode(&mut b),
            Err(MessageError::TooShort(10))
        ));
        let mut b = encode(MessageFrame::new(
            KEEPALIVE_REQ,
            1,
            Bytes::from(vec![b'x'; 100]),
        ));
        assert!(matches!(
            codec.decode(&mut b),
            Err(MessageError::TooLarge { len: 128, max: 64 })
        ));
    }

    #[tokio::test]
    async fn keepalive_is_answered_and_a_bad_client_does_not_hurt_others() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.state.message");
        let server =
            MessageServer::bind(&path, KeepaliveAnswer::running("agent-1", 3), 4096).unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));

        let mut bad = UnixStream::connect(&path).await.unwrap();
        bad.write_all(b"hello, this is not a frame at all")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let n = bad.read_to_end(&mut sink).await.unwrap();
        assert_eq!(n, 0, "the server closes a bad connection");

        let mut good = Framed::new(
            UnixStream::connect(&path).await.unwrap(),
            MessageCodec::new(4096),
        );
        let body = br#"{"plugin_name":"beat","version":"1","pid":1,"status_code":0,"status":"ok","remark":""}"#;
        good.send(MessageFrame::new(
            KEEPALIVE_REQ,
            77,
            Bytes::from_static(body),
        ))
        .await
        .unwrap();
        let reply = good.next().await.unwrap().unwrap();
        assert_eq!(reply.header.proto_type, KEEPALIVE_RESP);
        assert_eq!(reply.header.sequence, 77);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["agent_id"], "agent-1");
        assert_eq!(v["cloud_id"], 3);
        assert_eq!(v["run_mode"], 1);
        assert_eq!(v["status_code"], 2);
        stop.cancel();
    }

    /// A keepalive round trip on `conn`, or `None` if nothing came back
    /// within `wait`.
    async fn keepalive(
        conn: &mut Framed<UnixStream, MessageCodec>,
        wait: std::time::Duration,
    ) -> Option<MessageFrame> {
        conn.send(MessageFrame::new(
            KEEPALIVE_REQ,
            1,
            Bytes::from_static(b"{}"),
        ))
        .await
        .ok()?;
        tokio::time::timeout(wait, conn.next())
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
    }

    #[tokio::test]
    async fn connections_are_bounded_and_idle_ones_are_closed() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.state.message");
        let server = MessageServer::bind(&path, KeepaliveAnswer::running("a", 0), 4096)
            .unwrap()
            .with_max_connections(2)
            .with_idle_timeout(std::time::Duration::from_millis(600));
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        let connect = || async {
            Framed::new(
                UnixStream::connect(&path).await.unwrap(),
                MessageCodec::new(4096),
            )
        };
        let short = std::time::Duration::from_millis(300);

        // Two slots: both served; a third waits for a slot.
        let mut a = connect().await;
        let mut b = connect().await;
        assert!(keepalive(&mut a, short).await.is_some());
        assert!(keepalive(&mut b, short).await.is_some());
        let mut c = connect().await;
        assert!(
            keepalive(&mut c, short).await.is_none(),
            "a third connection is served beyond max_connections"
        );
        // One closing frees its slot for the waiting one.
        drop(a);
        let reply = tokio::time::timeout(std::time::Duration::from_secs(2), c.next())
            .await
            .expect("the waiting connection is served once a slot is free");
        assert!(reply.is_some());

        // A connection that sends nothing is closed after the idle timeout
        // (an open one would never end this read).
        let mut idle = UnixStream::connect(&path).await.unwrap();
        drop(b);
        let mut sink = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            idle.read_to_end(&mut sink),
        )
        .await
        .expect("an idle connection is closed")
        .unwrap();
        assert_eq!(n, 0);
        stop.cancel();
    }
}

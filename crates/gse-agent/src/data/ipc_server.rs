//! The unix-socket listener collectors report data to (COMPAT §1.1-1.2).
//!
//! Start at [`IpcServer::bind_chunked`] (or [`IpcServer::bind`]), then
//! [`IpcServer::run`]. Each connection is its own task: it reads what the
//! socket holds (at least [`READ_CHUNK`] bytes of room per read), decodes
//! every complete frame in it with [`IpcCodec`], answers 0x0A requests from
//! the latest [`AgentInfo`] in a `watch` channel, and sends the records of
//! that read into a bounded `mpsc` channel: as one `Vec` per read with
//! `bind_chunked` (one channel hand-over per read, not per record), or one
//! by one with `bind`. Many short-lived connections are normal (libgse
//! opens one per 0xC0C op message).
//!
//! Invariants:
//! - A bad frame closes only its own connection, with one WARN naming the
//!   peer's pid/uid (SO_PEERCRED) and the error; others are unaffected.
//! - Backpressure: when the record channel is full the connection awaits
//!   `send` and stops reading (a chunk holds at most [`CHUNK_MAX_BYTES`] of
//!   payload, or one larger frame), so the kernel buffer fills and the collector's
//!   write blocks (libgse times out after 5 s and retries). The agent itself
//!   never drops a decoded record, except the one in hand at shutdown.
//! - The socket file is removed at start only if nothing answers on it, and
//!   at exit only if it is still the one this server bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::agent_info::AgentInfo;
use super::ipc_codec::{DEFAULT_MAX_BODY, DecodeError, Frame, IpcCodec, Record};

/// Default socket path: the GSE 2.0 agent's data socket.
pub const DEFAULT_PATH: &str = "/usr/local/gse/agent/data/ipc.state.report";
/// Default socket file mode: collectors run as other users.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
/// Default cap on open connections; further clients wait in the backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long an agent-info reply may take to write (libgse's write timeout).
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of fds) so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Free room in a connection's buffer before each read.
pub const READ_CHUNK: usize = 64 * 1024;
/// Payload bytes of one chunk of records, at most (but one whole frame).
pub const CHUNK_MAX_BYTES: usize = 256 * 1024;
/// Room for records reserved in a new chunk (about one read of 1 KiB ones).
const CHUNK_RECORDS: usize = 64;

/// `[data.ipc]`-style settings for the listener.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpcServerConfig {
    /// Unix socket path; its parent directory is created.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Permission bits set on the socket file after bind.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// Largest accepted frame body in bytes; larger closes the connection.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Most connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_path() -> PathBuf {
    PathBuf::from(DEFAULT_PATH)
}
fn default_socket_mode() -> u32 {
    DEFAULT_SOCKET_MODE
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

impl Default for IpcServerConfig {
    fn default() -> Self {
        IpcServerConfig {
            path: default_path(),
            socket_mode: default_socket_mode(),
            max_body: default_max_body(),
            max_connections: default_max_connections(),
        }
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum IpcServerError {
    #[error("creating socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf },
    #[error("{path} is in use by another listener (is another agent running?)")]
    InUse { path: PathBuf },
    #[error("probing existing socket {path}: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("removing stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("binding {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("setting mode {mode:o} on {path}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("max_connections must be at least 1")]
    NoConnections,
}

/// Counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct IpcStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Records handed to the channel.
    pub records: AtomicU64,
    /// Payload bytes of those records.
    pub payload_bytes: AtomicU64,
    /// Connections closed for a malformed frame.
    pub bad_frames: AtomicU64,
    /// 0x0A requests answered.
    pub info_replies: AtomicU64,
    /// 0x0A requests left unanswered because the agent info was not ready.
    pub info_unanswered: AtomicU64,
}

/// A point-in-time copy of [`IpcStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcStatsSnapshot {
    pub connections: u64,
    pub open_connections: u64,
    pub records: u64,
    pub payload_bytes: u64,
    pub bad_frames: u64,
    pub info_replies: u64,
    pub info_unanswered: u64,
}

impl IpcStats {
    pub fn snapshot(&self) -> IpcStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IpcStatsSnapshot {
            connections: get(&self.connections),
            open_connections: get(&self.open_connections),
            records: get(&self.records),
            payload_bytes: get(&self.payload_bytes),
            bad_frames: get(&self.bad_frames),
            info_replies: get(&self.info_replies),
            info_unanswered: get(&self.info_unanswered),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// === impl IpcServer ===

/// A bound listener, ready to [`run`](IpcServer::run).
pub struct IpcServer {
    listener: UnixListener,
    config: IpcServerConfig,
    /// (dev, ino) of the socket file this server created.
    socket_id: (u64, u64),
    shared: Shared,
}

/// Where decoded records go.
#[derive(Clone)]
enum RecordOut {
    /// One record per send.
    One(mpsc::Sender<Record>),
    /// The records of one read per send.
    Chunks(mpsc::Sender<Vec<Record>>),
}

impl RecordOut {
    async fn closed(&self) {
        match self {
            RecordOut::One(tx) => tx.closed().await,
            RecordOut::Chunks(tx) => tx.closed().await,
        }
    }
}

/// What every connection task gets.
#[derive(Clone)]
struct Shared {
    info: watch::Receiver<AgentInfo>,
    records: RecordOut,
    stats: Arc<IpcStats>,
    max_body: usize,
}

impl IpcServer {
    /// Binds the socket: creates the parent directory, removes a stale
    /// socket file nobody listens on, binds and sets the file mode. Must be
    /// called inside a tokio runtime. Records are sent one by one.
    pub fn bind(
        config: IpcServerConfig,
        info: watch::Receiver<AgentInfo>,
        records: mpsc::Sender<Record>,
    ) -> Result<IpcServer, IpcServerError> {
        IpcServer::bind_to(config, info, RecordOut::One(records))
    }

    /// Like [`bind`](IpcServer::bind), but a connection sends the records
    /// of each read as one `Vec` (in order, never empty): far fewer channel
    /// hand-overs and task wake-ups at high rates.
    pub fn bind_chunked(
        config: IpcServerConfig,
        info: watch::Receiver<AgentInfo>,
        records: mpsc::Sender<Vec<Record>>,
    ) -> Result<IpcServer, IpcServerError> {
        IpcServer::bind_to(config, info, RecordOut::Chunks(records))
    }

    fn bind_to(
        config: IpcServerConfig,
        info: watch::Receiver<AgentInfo>,
        records: RecordOut,
    ) -> Result<IpcServer, IpcServerError> {
        if config.max_connections == 0 {
            return Err(IpcServerError::NoConnections);
        }
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| IpcServerError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| IpcServerError::Bind {
            path: path.clone(),
            source,
        })?;
        let chmod_err = |source| IpcServerError::Chmod {
            path: path.clone(),
            mode: config.socket_mode,
            source,
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(chmod_err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(chmod_err)?;
        let shared = Shared {
            info,
            records,
            stats: Arc::default(),
            max_body: config.max_body,
        };
        Ok(IpcServer {
            listener,
            socket_id: (meta.dev(), meta.ino()),
            config,
            shared,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    pub fn stats(&self) -> Arc<IpcStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` is cancelled or the record receiver is
    /// dropped; then closes every connection, waits for their tasks and
    /// removes the socket file.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(path = %self.config.path.display(), "local data socket listening");
        let conns = shutdown.child_token();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.records.closed() => {
                    warn!(path = %self.config.path.display(), "record consumer is gone; local data socket stops");
                    break;
                }
                a = accept_with_permit(&self.listener, &limit) => a,
            };
            let (stream, permit) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "accepting a local data connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let cancel = conns.clone();
            tracker.spawn(async move {
                serve_connection(stream, shared, cancel).await;
                drop(permit);
            });
        }
        conns.cancel();
        tracker.close();
        tracker.wait().await;
        self.remove_own_socket();
        info!(path = %self.config.path.display(), "local data socket closed");
    }

    /// Removes the socket file unless someone replaced it meanwhile.
    fn remove_own_socket(&self) {
        let path = &self.config.path;
        match std::fs::symlink_metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == self.socket_id => {
                if let Err(error) = std::fs::remove_file(path) {
                    warn!(path = %path.display(), %error, "removing the local data socket failed");
                }
            }
            _ => debug!(path = %path.display(), "socket file is gone or replaced; left alone"),
        }
    }
}

async fn accept_with_permit(
    listener: &UnixListener,
    limit: &Arc<Semaphore>,
) -> io::Result<(UnixStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = limit
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// Removes `path` if it is a socket nobody accepts on; refuses otherwise.
fn remove_stale_socket(path: &Path) -> Result<(), IpcServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(IpcServerError::Probe {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(IpcServerError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(IpcServerError::InUse { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing stale local data socket");
            std::fs::remove_file(path).map_err(|source| IpcServerError::RemoveStale {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(IpcServerError::Probe {
            path: path.into(),
            source,
        }),
    }
}

// === one connection ===

/// Who is on the other end, from SO_PEERCRED, for log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

impl Peer {
    pub(crate) fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: Some(c.uid()),
            },
            Err(_) => Peer::default(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.uid) {
            (Some(pid), Some(uid)) => write!(f, "pid {pid} uid {uid}"),
            (None, Some(uid)) => write!(f, "uid {uid}"),
            _ => f.write_str("unknown peer"),
        }
    }
}

/// Why a connection ended.
enum End {
    /// Clean EOF, or our shutdown.
    Closed,
    /// The stream is not valid frames.
    BadFrame(DecodeError),
    /// The socket failed (reset, reply write timeout).
    Io(io::Error),
    /// The record receiver was dropped.
    ConsumerGone,
}

async fn serve_connection(stream: UnixStream, shared: Shared, cancel: CancellationToken) {
    let peer = Peer::of(&stream);
    let stats = shared.stats.clone();
    bump(&stats.connections, 1);
    bump(&stats.open_connections, 1);
    debug!(%peer, "local data connection opened");
    let end = tokio::select! {
        _ = cancel.cancelled() => End::Closed,
        end = pump_frames(stream, &shared) => end,
    };
    stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    match end {
        End::Closed => debug!(%peer, "local data connection closed"),
        End::BadFrame(error) => {
            bump(&stats.bad_frames, 1);
            warn!(%peer, %error, "closing local data connection: bad frame");
        }
        End::Io(error) => debug!(%peer, %error, "local data connection failed"),
        End::ConsumerGone => debug!(%peer, "record consumer gone; connection closed"),
    }
}

/// Reads frames until the connection ends; the socket is only read again
/// after the records of the previous read were accepted by the channel
/// (backpressure). Records decoded before a bad frame are still handed on.
async fn pump_frames(stream: UnixStream, shared: &Shared) -> End {
    let (mut rd, mut wr) = stream.into_split();
    let mut codec = IpcCodec::new(shared.max_body);
    let mut buf = BytesMut::new();
    let mut eof = false;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
        let mut bytes = 0;
        let mut ended = None;
        loop {
            let frame = if eof {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            match frame {
                Ok(Some(Frame::Record(record))) => {
                    bytes += record.payload.len();
                    chunk.push(record);
                    if bytes >= CHUNK_MAX_BYTES {
                        break;
                    }
                }
                Ok(Some(Frame::AgentInfoRequest)) => {
                    if !hand_over(shared, std::mem::take(&mut chunk), &mut bytes).await {
                        return End::ConsumerGone;
                    }
                    if let Err(e) = answer_info(&mut wr, shared).await {
                        return End::Io(e);
                    }
                }
                Ok(None) if eof => {
                    ended = Some(End::Closed);
                    break;
                }
                Ok(None) => break,
                Err(DecodeError::Io(e)) => {
                    ended = Some(End::Io(e));
                    break;
                }
                Err(e) => {
                    ended = Some(End::BadFrame(e));
                    break;
                }
            }
        }
        let full = bytes >= CHUNK_MAX_BYTES;
        if !hand_over(shared, chunk, &mut bytes).await {
            return End::ConsumerGone;
        }
        if let Some(end) = ended {
            return end;
        }
        if full {
            continue;
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) => return End::Io(e),
        }
    }
}

/// Sends a chunk of `bytes` payload bytes (if not empty), in order, and
/// counts what was accepted; false when the consumer is gone.
async fn hand_over(shared: &Shared, chunk: Vec<Record>, bytes: &mut usize) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let stats = &shared.stats;
    match &shared.records {
        RecordOut::One(tx) => {
            for r in chunk {
                let len = r.payload.len() as u64;
                if tx.send(r).await.is_err() {
                    return false;
                }
                bump(&stats.records, 1);
                bump(&stats.payload_bytes, len);
            }
        }
        RecordOut::Chunks(tx) => {
            let n = chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                return false;
            }
            bump(&stats.records, n);
            bump(&stats.payload_bytes, *bytes as u64);
        }
    }
    *bytes = 0;
    true
}

/// Writes the 0x0A reply in one write, or leaves the request unanswered
/// while the agent info is not valid yet (the collector asks again).
async fn answer_info(wr: &mut OwnedWriteHalf, shared: &Shared) -> io::Result<()> {
    let reply = shared.info.borrow().encode_reply();
    let reply = match reply {
        Ok(r) => r,
        Err(error) => {
            bump(&shared.stats.info_unanswered, 1);
            warn!(%error, "agent-info request left unanswered");
            return Ok(());
        }
    };
    tokio::time::timeout(REPLY_WRITE_TIMEOUT, wr.write_all(&reply))
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "agent-info reply write timed out")
        })??;
    bump(&shared.stats.info_replies, 1);
    Ok(())
}

#[cfg(test)]
mod tests;

//! The unix-socket listener collectors report data to (COMPAT §1.1-1.2).
//!
//! Start at [`IpcServer::bind_chunked`] (or [`IpcServer::bind`]), then
//! [`IpcServer::run`]. Each connection is its own task: it reads what the
//! socket holds ([`FrameReader`]), decodes every complete frame in it with
//! [`IpcCodec`], answers 0x0A requests from the latest [`AgentInfo`] in a
//! `watch` channel, and sends the records of that read, each stamped with
//! the sender's uid and pid (SO_PEERCRED), into a bounded `mpsc` channel:
//! as one `Vec` per read with `bind_chunked` (one channel hand-over per
//! read, not per record), or one by one with `bind`. Many short-lived
//! connections are normal (libgse opens one per 0xC0C op message).
//!
//! Invariants:
//! - The socket is open to local users, who are not trusted: connections
//!   are admitted within `max_connections`, per non-root uid within
//!   `max_connections_per_uid`, and for all non-root uids together within
//!   `max_connections - root_reserved_connections`; unfinished large frames
//!   are buffered only within a budget; a connection that completes no
//!   frame for `idle_timeout` is closed; and records are handed to the
//!   channel by turns of uid, so a user flooding on all its connections
//!   gets one hand-over per round like any other (see `local_socket`).
//! - A bad frame closes only its own connection, with one WARN naming the
//!   peer's pid/uid and the error; a frame over the record limit is refused
//!   with an ERROR naming the limit (the record is lost to the collector).
//! - Backpressure: when the record channel is full the connection awaits
//!   `send` and stops reading (a chunk holds at most [`CHUNK_MAX_BYTES`] of
//!   payload, or one larger frame), so the kernel buffer fills and the collector's
//!   write blocks (libgse times out after 5 s and retries). The agent itself
//!   never drops a decoded record, except the one in hand at shutdown.
//! - The socket file is removed at start only if nothing answers on it, and
//!   at exit only if it is still the one this server bound; the same for
//!   its links.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::agent_info::AgentInfo;
use super::config::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID,
    DEFAULT_SOCKET_MODE, ROOT_RESERVE_DIVISOR,
};
use super::ipc_codec::{DEFAULT_MAX_BODY, DecodeError, Frame, HEADER_LEN, IpcCodec, Peer, Record};
use super::local_socket::admission::{Admission, Conn, ConnLimits, Names, Slot};
use super::local_socket::links::Links;
use super::local_socket::reader::{FrameReader, ReadEnd};
use super::local_socket::{SocketError, SocketFile, SocketOptions};

/// Default socket path: the GSE 2.0 agent's data socket.
pub const DEFAULT_PATH: &str = "/usr/local/gse/agent/data/ipc.state.report";
/// How long an agent-info reply may take to write (libgse's write timeout).
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of fds) so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Payload bytes of one chunk of records, at most (but one whole frame).
pub const CHUNK_MAX_BYTES: usize = 256 * 1024;
/// Room for records reserved in a new chunk (about one read of 1 KiB ones).
const CHUNK_RECORDS: usize = 64;

/// How the listener is set up (from `[data]`, see `DataConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcServerConfig {
    /// Unix socket path; its parent directory is created.
    pub path: PathBuf,
    /// Permission bits set on the socket file after bind.
    pub socket_mode: u32,
    /// Group given to the socket file; `""` = the agent's own.
    pub socket_group: String,
    /// Largest accepted frame body in bytes; larger closes the connection.
    pub max_body: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most connections of one non-root uid at once.
    pub max_connections_per_uid: usize,
    /// Connections kept for root; `None` = a quarter of `max_connections`.
    pub root_reserve: Option<usize>,
    /// A connection completing no frame for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for IpcServerConfig {
    fn default() -> Self {
        IpcServerConfig {
            path: PathBuf::from(DEFAULT_PATH),
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_group: String::new(),
            max_body: DEFAULT_MAX_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            root_reserve: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why the listener could not start.
pub type IpcServerError = SocketError;

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
    /// Connections closed for completing no frame within `idle_timeout`.
    pub idle_closed: AtomicU64,
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
    pub idle_closed: u64,
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
            idle_closed: get(&self.idle_closed),
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
    file: SocketFile,
    admission: Admission,
    links: Links,
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
    idle_timeout: Duration,
}

impl IpcServer {
    /// Binds the socket: creates the parent directory, removes a stale
    /// socket file nobody listens on, binds and sets the file mode and
    /// group. Must be called inside a tokio runtime. Records are sent one
    /// by one.
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
        let opts = SocketOptions {
            mode: config.socket_mode,
            group: config.socket_group.clone(),
            key: "data.ipc",
        };
        let (listener, file) = SocketFile::bind(&config.path, &opts)?;
        let admission = Admission::new(
            Names {
                socket: "local data socket",
                per_uid_key: "data.max_connections_per_uid",
                reserve_key: "data.root_reserved_connections",
            },
            ConnLimits {
                max_connections: config.max_connections,
                max_connections_per_uid: config.max_connections_per_uid,
                root_reserve: config
                    .root_reserve
                    .unwrap_or(config.max_connections / ROOT_RESERVE_DIVISOR),
                idle_timeout: config.idle_timeout,
                max_frame: HEADER_LEN + config.max_body,
            },
        );
        let shared = Shared {
            info,
            records,
            stats: Arc::default(),
            max_body: config.max_body,
            idle_timeout: config.idle_timeout,
        };
        Ok(IpcServer {
            listener,
            file,
            admission,
            links: Links::default(),
            shared,
        })
    }

    /// Makes `links` symlinks to the socket now; they are removed when
    /// [`run`](IpcServer::run) ends.
    pub fn with_links(mut self, links: &[PathBuf]) -> Self {
        self.links = Links::make(self.file.path(), links, "data.ipc_links");
        self
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn stats(&self) -> Arc<IpcStats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` is cancelled or the record receiver is
    /// dropped; then closes every connection, waits for their tasks and
    /// removes the socket file and its links.
    pub async fn run(self, shutdown: CancellationToken) {
        let path = self.file.path().display().to_string();
        let limits = self.admission.limits().clone();
        info!(%path, max_connections = limits.max_connections, max_connections_per_uid = limits.max_connections_per_uid, root_reserved_connections = limits.root_reserve, idle_timeout = ?limits.idle_timeout, "local data socket listening");
        let conns = shutdown.child_token();
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.records.closed() => {
                    warn!(%path, "record consumer is gone; local data socket stops");
                    break;
                }
                a = self.admission.accept(&self.listener) => a,
            };
            match accepted {
                Ok(conn) => {
                    tracker.spawn(serve_connection(conn, self.shared.clone(), conns.clone()));
                }
                Err(error) => {
                    warn!(%error, "accepting a local data connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
        conns.cancel();
        tracker.close();
        tracker.wait().await;
        self.file.remove();
        self.links.remove();
        info!(%path, "local data socket closed");
    }
}

// === one connection ===

/// Why a connection ended.
enum End {
    /// Clean EOF, or our shutdown.
    Closed,
    /// The stream is not valid frames.
    BadFrame(DecodeError),
    /// The socket failed (reset, reply write timeout).
    Io(io::Error),
    /// No frame completed within the idle timeout.
    Idle(Duration),
    /// The record receiver was dropped.
    ConsumerGone,
}

async fn serve_connection(conn: Conn, shared: Shared, cancel: CancellationToken) {
    let Conn { stream, peer, slot } = conn;
    let stats = shared.stats.clone();
    bump(&stats.connections, 1);
    bump(&stats.open_connections, 1);
    debug!(%peer, "local data connection opened");
    let end = tokio::select! {
        _ = cancel.cancelled() => End::Closed,
        end = pump_frames(stream, peer, &slot, &shared) => end,
    };
    stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    match end {
        End::Closed => debug!(%peer, "local data connection closed"),
        End::BadFrame(error @ DecodeError::BodyTooLarge { .. }) => {
            bump(&stats.bad_frames, 1);
            tracing::error!(%peer, %error, "refused a record over the size limit; connection closed");
        }
        End::BadFrame(error) => {
            bump(&stats.bad_frames, 1);
            warn!(%peer, %error, "closing local data connection: bad frame");
        }
        End::Io(error) => debug!(%peer, %error, "local data connection failed"),
        End::Idle(idle) => {
            bump(&stats.idle_closed, 1);
            debug!(%peer, ?idle, "closing a local data connection that completed no frame in time (data.idle_timeout)");
        }
        End::ConsumerGone => debug!(%peer, "record consumer gone; connection closed"),
    }
}

/// What one pass over the buffered bytes decoded.
struct Pass {
    chunk: Vec<Record>,
    bytes: usize,
    /// The chunk reached [`CHUNK_MAX_BYTES`]: hand it on before reading.
    full: bool,
    /// Frames completed (records and agent-info requests).
    frames: usize,
    ended: Option<End>,
}

/// Reads frames until the connection ends; the socket is only read again
/// after the records of the previous read were accepted by the channel
/// (backpressure). Records decoded before a bad frame are still handed on.
async fn pump_frames(
    stream: tokio::net::UnixStream,
    peer: Peer,
    slot: &Slot,
    shared: &Shared,
) -> End {
    let (mut rd, mut wr) = stream.into_split();
    let mut codec = IpcCodec::new(shared.max_body);
    let mut reader = FrameReader::new(shared.idle_timeout);
    let mut eof = false;
    loop {
        let mut pass =
            match decode_pass(&mut codec, &mut reader, eof, peer, &mut wr, slot, shared).await {
                Ok(pass) => pass,
                Err(end) => return end,
            };
        if !hand_over(
            shared,
            slot,
            std::mem::take(&mut pass.chunk),
            &mut pass.bytes,
        )
        .await
        {
            return End::ConsumerGone;
        }
        if pass.frames > 0 {
            // Once per pass, after the hand-over: waiting on a full channel
            // is not idleness.
            reader.progress();
        }
        if let Some(end) = pass.ended {
            return end;
        }
        if pass.full {
            continue;
        }
        let head = codec.frame_len(reader.buf());
        match reader.fill(&mut rd, slot, head).await {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(ReadEnd::Idle(idle)) => return End::Idle(idle),
            Err(ReadEnd::Io(e)) => return End::Io(e),
        }
    }
}

/// Decodes the buffered frames: records (stamped with `peer`) into a
/// chunk, 0x0A requests answered in order (after handing on the records
/// before them).
async fn decode_pass(
    codec: &mut IpcCodec,
    reader: &mut FrameReader,
    eof: bool,
    peer: Peer,
    wr: &mut OwnedWriteHalf,
    slot: &Slot,
    shared: &Shared,
) -> Result<Pass, End> {
    let mut pass = Pass {
        chunk: Vec::with_capacity(CHUNK_RECORDS),
        bytes: 0,
        full: false,
        frames: 0,
        ended: None,
    };
    loop {
        let buf = reader.buf();
        let frame = if eof {
            codec.decode_eof(buf)
        } else {
            codec.decode(buf)
        };
        match frame {
            Ok(Some(Frame::Record(mut record))) => {
                pass.frames += 1;
                record.peer = peer;
                pass.bytes += record.payload.len();
                pass.chunk.push(record);
                if pass.bytes >= CHUNK_MAX_BYTES {
                    pass.full = true;
                    return Ok(pass);
                }
            }
            Ok(Some(Frame::AgentInfoRequest)) => {
                pass.frames += 1;
                if !hand_over(
                    shared,
                    slot,
                    std::mem::take(&mut pass.chunk),
                    &mut pass.bytes,
                )
                .await
                {
                    return Err(End::ConsumerGone);
                }
                answer_info(wr, shared).await.map_err(End::Io)?;
            }
            Ok(None) => {
                pass.ended = eof.then_some(End::Closed);
                return Ok(pass);
            }
            Err(DecodeError::Io(e)) => {
                pass.ended = Some(End::Io(e));
                return Ok(pass);
            }
            Err(e) => {
                pass.ended = Some(End::BadFrame(e));
                return Ok(pass);
            }
        }
    }
}

/// Sends a chunk of `bytes` payload bytes (if not empty), in order and in
/// the sender's turn ([`Slot::send`]), and counts what was accepted; false
/// when the consumer is gone.
async fn hand_over(shared: &Shared, slot: &Slot, chunk: Vec<Record>, bytes: &mut usize) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let stats = &shared.stats;
    match &shared.records {
        RecordOut::One(tx) => {
            for r in chunk {
                let len = r.payload.len() as u64;
                if slot.send(tx, r).await.is_err() {
                    return false;
                }
                bump(&stats.records, 1);
                bump(&stats.payload_bytes, len);
            }
        }
        RecordOut::Chunks(tx) => {
            let n = chunk.len() as u64;
            if slot.send(tx, chunk).await.is_err() {
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

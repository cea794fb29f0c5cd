//! The P2P listener: serves the pieces in the [`PieceStore`] to peers.
//!
//! Per connection: mutual TLS, then `PeerHello` (the task and its token;
//! anything else is refused with `PeerHelloAck{accepted: false}` and the
//! connection closed), then `PeerHelloAck` with our have-bitmaps, then
//! `PieceRequest` -> `PieceData`: OK with the bytes, BUSY when every upload
//! slot (agent-wide) or this connection's share of them is taken, MISSING
//! when we do not have the piece yet, ERROR when it cannot be read. Pieces
//! the task gains are pushed as `Have`s, batched every [`HAVE_BATCH`].
//! Bytes go out under the task's and the agent's upload caps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gse_proto::link::{EntryHave, Have, PeerHello, PeerHelloAck, PieceRequest, PieceStatus};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{CONN_QUEUE, Outgoing, run_writer};
use crate::file::rate::{Limits, RateLimit};
use crate::file::service::upload_buffer_kib;
use crate::file::store::{PieceStore, ServeError, TaskShare};
use crate::file::wire::PieceDataBody;

/// Largest frame a downloader may send us (a hello or a request).
const MAX_REQUEST_FRAME: usize = 64 * 1024;
/// How long a hello for a task not here yet waits for it.
const UNKNOWN_TASK_WAIT: Duration = Duration::from_secs(3);
/// Time for the TLS handshake and the PeerHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often gained pieces are pushed as `Have`s.
pub const HAVE_BATCH: Duration = Duration::from_millis(50);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 512;
/// Piece uploads one connection may hold at once.
const PER_CONN_UPLOADS: usize = 4;
/// Under a speed cap, requests that would wait longer than this for
/// their turn are answered BUSY: short queues let downloaders find the
/// piece elsewhere at once, which spreads new pieces fastest.
const MAX_UPLOAD_QUEUE: Duration = Duration::from_millis(500);
/// Most pieces in one `Have` frame.
const HAVE_CHUNK: usize = 65_536;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type RequestReader = FramedRead<ReadHalf<ServerTls>, FrameCodec>;
type ConnWriter = WriteHalf<ServerTls>;

/// The P2P listener's shared state.
pub struct PeerServer {
    store: Arc<PieceStore>,
    /// Upload slots, agent-wide (`[file] upload_slots`).
    slots: Arc<Semaphore>,
    /// Upload buffer budget, in KiB (`FileService::upload_buffer`).
    buffer: Arc<Semaphore>,
    /// The agent-wide upload cap.
    upload: Option<Arc<RateLimit>>,
    acceptor: TlsAcceptor,
    conns: Arc<Semaphore>,
}

/// One accepted, greeted connection.
struct Conn {
    share: Arc<TaskShare>,
    peer: String,
    tx: mpsc::Sender<Outgoing>,
    uploads: Arc<Semaphore>,
    /// Ends the connection's jobs when it goes.
    done: CancellationToken,
}

// === impl PeerServer ===

impl PeerServer {
    pub fn new(
        store: Arc<PieceStore>,
        slots: Arc<Semaphore>,
        buffer: Arc<Semaphore>,
        upload: Option<Arc<RateLimit>>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Arc<Self> {
        Arc::new(PeerServer {
            store,
            slots,
            buffer,
            upload,
            acceptor: TlsAcceptor::from(tls),
            conns: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Accepts connections until `shutdown`.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "P2P listener cannot accept; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.conns.clone().try_acquire_owned() else {
                tracing::warn!(peer = %addr, limit = MAX_CONNECTIONS, "too many peer connections; closing a new one");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            let shutdown = shutdown.clone();
            let span = tracing::debug_span!("peer_conn", peer = %addr);
            tokio::spawn(
                async move {
                    if let Err(reason) = this.serve(tcp, addr, shutdown).await {
                        tracing::debug!(reason = %reason, "peer connection ended");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// One connection: handshake and hello, then requests until it closes.
    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let (mut reader, wr, hello) = self.greet(tcp).await?;
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let writer = tokio::spawn(run_writer(wr, rx));
        let share = match self.admit(&hello).await {
            Ok(share) => share,
            Err(message) => {
                tracing::info!(peer = %addr, agent = %hello.agent, transfer_id = %hello.transfer_id, reason = %message, "refusing a peer");
                let _ = tx.send(ack_frame(false, message.clone(), Vec::new())).await;
                drop(tx);
                let _ = writer.await;
                return Err(message);
            }
        };
        let (have, log_pos) = share.have_snapshot();
        tx.send(ack_frame(true, String::new(), have))
            .await
            .map_err(|_| "writer ended".to_owned())?;
        let conn = Arc::new(Conn {
            peer: if hello.agent.is_empty() {
                addr.to_string()
            } else {
                hello.agent
            },
            tx,
            uploads: Arc::new(Semaphore::new(PER_CONN_UPLOADS)),
            done: share.closed.child_token(),
            share,
        });
        let _done = conn.done.clone().drop_guard();
        tokio::spawn(push_haves(conn.clone(), log_pos));
        self.serve_requests(&conn, &mut reader, &shutdown).await
    }

    /// TLS, then the first frame, which must be a PeerHello.
    async fn greet(
        &self,
        tcp: TcpStream,
    ) -> Result<(RequestReader, ConnWriter, PeerHello), String> {
        let tls = timeout(HELLO_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| "no TLS handshake in time".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let (rd, wr) = tokio::io::split(tls);
        // Downloaders send only hellos and requests: small frames.
        let mut reader = FramedRead::new(rd, FrameCodec::new(MAX_REQUEST_FRAME));
        let hello = match timeout(HELLO_TIMEOUT, reader.next()).await {
            Ok(Some(Ok(f))) if f.msg_type == MsgType::PeerHello => f
                .decode::<PeerHello>()
                .map_err(|e| format!("bad PeerHello: {e}"))?,
            Ok(Some(Ok(f))) => {
                return Err(format!(
                    "first frame has type {:#x}, not PeerHello",
                    f.msg_type.to_u16()
                ));
            }
            Ok(Some(Err(e))) => return Err(format!("bad first frame: {e}")),
            Ok(None) => return Err("closed before PeerHello".into()),
            Err(_) => return Err("no PeerHello in time".into()),
        };
        Ok((reader, wr, hello))
    }

    /// Answers the connection's requests until it closes, the task leaves
    /// the store, or we shut down.
    async fn serve_requests(
        self: Arc<Self>,
        conn: &Arc<Conn>,
        reader: &mut RequestReader,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = conn.done.cancelled() => return Ok(()),
                next = reader.next() => match next {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(format!("bad frame: {e}")),
                    Some(Ok(frame)) => frame,
                },
            };
            if frame.msg_type != MsgType::PieceRequest {
                tracing::debug!(msg_type = frame.msg_type.to_u16(), "ignoring a peer frame");
                continue;
            }
            let req: PieceRequest = frame
                .decode()
                .map_err(|e| format!("bad PieceRequest: {e}"))?;
            if let Some(reply) = self.clone().on_request(conn, req, frame.stream_id) {
                // Waits while the writer is behind: a peer that floods
                // requests but does not read slows only itself.
                if conn.tx.send(reply).await.is_err() {
                    return Err("writer ended".into());
                }
            }
        }
    }

    /// The share a hello may use, or why not. A task not (yet) here is
    /// waited for a little: peers that got their FileStart first dial us
    /// before ours has arrived.
    async fn admit(&self, hello: &PeerHello) -> Result<Arc<TaskShare>, String> {
        let deadline = tokio::time::Instant::now() + UNKNOWN_TASK_WAIT;
        let mut added = self.store.watch_added();
        let share = loop {
            if let Some(share) = self.store.get(&hello.transfer_id, hello.task_index) {
                break share;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, added.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(format!(
                    "transfer {} task {} is not served here (finished, cancelled, or not started yet)",
                    hello.transfer_id, hello.task_index
                ));
            }
        };
        if !share.token_matches(&hello.token) {
            return Err(format!(
                "wrong token for transfer {} task {}",
                hello.transfer_id, hello.task_index
            ));
        }
        Ok(share)
    }

    /// Answers at once (BUSY, MISSING, ERROR), or starts an upload job and
    /// returns `None`.
    fn on_request(
        self: Arc<Self>,
        conn: &Arc<Conn>,
        req: PieceRequest,
        stream_id: u64,
    ) -> Option<Outgoing> {
        let reply = |status: PieceStatus, message: String| {
            Some(reply_frame(stream_id, &req, status, message))
        };
        if req.transfer_id != conn.share.transfer_id || req.task_index != conn.share.task_index {
            return reply(
                PieceStatus::PieceError,
                "this connection is for another task".into(),
            );
        }
        let len = match conn.share.check(req.entry_index, req.piece) {
            Ok(len) => len,
            Err(status) => return reply(status, String::new()),
        };
        // Capped uploads serve in turn; a request that would wait long
        // behind the others is better asked of another peer.
        let limits = Limits::new([conn.share.upload.clone(), self.upload.clone()]);
        if limits.booked_ahead() > MAX_UPLOAD_QUEUE {
            return reply(PieceStatus::PieceBusy, String::new());
        }
        let Ok(upload) = conn.uploads.clone().try_acquire_owned() else {
            return reply(PieceStatus::PieceBusy, String::new());
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return reply(PieceStatus::PieceBusy, String::new());
        };
        let (entry, piece) = (req.entry_index, req.piece);
        if !conn.share.claim_seed_upload(entry, piece) {
            return reply(PieceStatus::PieceBusy, String::new());
        }
        let job = Upload {
            conn: conn.clone(),
            req,
            stream_id,
            len,
            limits,
            slot,
            _slot_of_conn: upload,
        };
        tokio::spawn(self.upload(job));
        None
    }

    /// One accepted request: waits for its turn under the caps and for
    /// buffer room, reads (and, on a source, verifies) the piece, queues it.
    async fn upload(self: Arc<Self>, job: Upload) {
        let Upload {
            conn,
            req,
            stream_id,
            len,
            limits,
            slot,
            _slot_of_conn,
        } = job;
        let (entry, piece) = (req.entry_index, req.piece);
        let mut claim = SeedClaim {
            share: conn.share.clone(),
            entry,
            piece,
            sent: false,
        };
        tokio::select! {
            _ = conn.done.cancelled() => return,
            _ = limits.acquire(len as u64) => {}
        }
        let buffer = tokio::select! {
            _ = conn.done.cancelled() => return,
            b = self.buffer.clone().acquire_many_owned(upload_buffer_kib(len)) => match b {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        let share = conn.share.clone();
        // Allocated here, not on the blocking thread: piece buffers then
        // come from the runtime threads' few malloc arenas.
        let buf = Vec::with_capacity(len);
        let read = tokio::task::spawn_blocking(move || share.read_piece(entry, piece, buf)).await;
        let out = match read {
            Ok(Ok(data)) => Outgoing::Piece {
                stream_id,
                head: piece_head(&req, PieceStatus::PieceOk, String::new()),
                data,
                permits: vec![slot, buffer],
            },
            Ok(Err(ServeError::Missing { .. })) => {
                limits.refund(len as u64);
                reply_frame(stream_id, &req, PieceStatus::PieceMissing, String::new())
            }
            Ok(Err(ServeError::Failed(message))) => {
                tracing::warn!(peer = %conn.peer, entry, piece, error = %message, "cannot serve a piece");
                reply_frame(stream_id, &req, PieceStatus::PieceError, message)
            }
            Err(e) => reply_frame(stream_id, &req, PieceStatus::PieceError, e.to_string()),
        };
        claim.sent = matches!(out, Outgoing::Piece { .. });
        let _ = conn.tx.send(out).await;
    }
}

/// An accepted request and what it holds.
struct Upload {
    conn: Arc<Conn>,
    req: PieceRequest,
    stream_id: u64,
    len: usize,
    limits: Limits,
    slot: OwnedSemaphorePermit,
    _slot_of_conn: OwnedSemaphorePermit,
}

/// A source's claim on uploading one piece, ended when dropped.
struct SeedClaim {
    share: Arc<TaskShare>,
    entry: u32,
    piece: u32,
    sent: bool,
}

impl Drop for SeedClaim {
    fn drop(&mut self) {
        self.share
            .seed_upload_done(self.entry, self.piece, self.sent);
    }
}

/// Pushes the task's newly gained pieces as `Have`s, batched.
async fn push_haves(conn: Arc<Conn>, mut pos: usize) {
    let mut gained = conn.share.watch_gained();
    loop {
        tokio::select! {
            _ = conn.done.cancelled() => return,
            changed = gained.changed() => if changed.is_err() { return },
        }
        tokio::time::sleep(HAVE_BATCH).await;
        let (items, next) = conn.share.gained_since(pos);
        pos = next;
        let mut by_entry: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (entry, piece) in items {
            by_entry.entry(entry).or_default().push(piece);
        }
        for (entry_index, pieces) in by_entry {
            for chunk in pieces.chunks(HAVE_CHUNK) {
                let have = Have {
                    entry_index,
                    pieces: chunk.to_vec(),
                };
                let frame = Frame::new(MsgType::Have, 0, &have);
                if conn.tx.send(Outgoing::Frame(frame)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn piece_head(req: &PieceRequest, status: PieceStatus, message: String) -> PieceDataBody {
    PieceDataBody {
        transfer_id: req.transfer_id.clone(),
        task_index: req.task_index,
        entry_index: req.entry_index,
        piece: req.piece,
        request_id: req.request_id,
        status: status as i32,
        data: Default::default(),
        message,
    }
}

fn ack_frame(accepted: bool, message: String, have: Vec<EntryHave>) -> Outgoing {
    let ack = PeerHelloAck {
        accepted,
        message,
        have,
    };
    Outgoing::Frame(Frame::new(MsgType::PeerHelloAck, 0, &ack))
}

fn reply_frame(
    stream_id: u64,
    req: &PieceRequest,
    status: PieceStatus,
    message: String,
) -> Outgoing {
    Outgoing::Frame(Frame::new(
        MsgType::PieceData,
        stream_id,
        &piece_head(req, status, message),
    ))
}

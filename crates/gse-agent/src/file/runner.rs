//! One link session's file work: the frames of types 0x200-0x27f in, and
//! the transfer's own frames out through the session's queue.
//!
//! [`FileRunner::handle`] starts a source task per `FileManifestRequest`
//! (`source.rs`), a download per `FileStart` (`download/`), passes
//! `PeerSet`s to their download, answers the node's `PieceRequest`s from
//! the [`PieceStore`], hands `PieceData` answers to the [`DirectClient`],
//! and cancels tasks on `CancelTransfer`. [`FileRunner::cancel_all`] ends
//! everything when the session ends: the node fails a lost agent's entries
//! with 117, so nothing goes on unreported, and temp files are removed.
//!
//! [`PieceStore`]: super::store::PieceStore

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gse_proto::link::{CancelTransfer, FileManifestRequest, FileStart, Peer, PeerSet};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::direct::{DirectClient, LinkOut};
use super::download::{self, DownloadCtx};
use super::service::FileService;
use super::source;
use super::wire::PieceDataBody;

/// How long [`FileRunner::cancel_all`] waits for tasks to clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// PeerSet updates queued per download.
const PEER_SET_QUEUE: usize = 4;

/// Which part of a task this agent plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Source,
    Download,
}

type LiveKey = (String, u32, Role);

struct LiveTask {
    cancel: CancellationToken,
    peers: Option<mpsc::Sender<Vec<Peer>>>,
}

type Live = Arc<Mutex<HashMap<LiveKey, LiveTask>>>;

/// Runs the file transfers of one link session.
pub struct FileRunner {
    service: Arc<FileService>,
    out: mpsc::Sender<LinkOut>,
    direct: Arc<DirectClient>,
    /// This agent, "cloud:ip", as peers see it.
    agent: String,
    live: Live,
    /// Parent of every task's token.
    all: CancellationToken,
    tracker: TaskTracker,
}

// === impl FileRunner ===

impl FileRunner {
    pub fn new(service: Arc<FileService>, out: mpsc::Sender<LinkOut>, agent: String) -> Self {
        FileRunner {
            direct: DirectClient::new(out.clone()),
            service,
            out,
            agent,
            live: Arc::default(),
            all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Takes a file frame from the node; `false` if `frame` is not one.
    pub fn handle(&self, frame: &Frame) -> bool {
        let sid = frame.stream_id;
        match frame.msg_type {
            MsgType::FileManifestRequest => {
                if let Some(req) = decoded(frame) {
                    self.start_source(sid, req);
                }
            }
            MsgType::FileStart => {
                if let Some(start) = decoded(frame) {
                    self.start_download(sid, start);
                }
            }
            MsgType::PeerSet => {
                if let Some(set) = decoded(frame) {
                    self.peer_set(set);
                }
            }
            MsgType::CancelTransfer => {
                if let Some(c) = decoded::<CancelTransfer>(frame) {
                    self.cancel(&c);
                }
            }
            MsgType::PieceRequest => {
                if let Some(req) = decoded(frame) {
                    source::serve_direct(&self.service, &self.out, &self.all, sid, req);
                }
            }
            MsgType::PieceData => {
                if let Some(body) = decoded::<PieceDataBody>(frame)
                    && !self.direct.on_piece_data(body)
                {
                    tracing::debug!("PieceData for a request that is not waiting; ignored");
                }
            }
            _ => return false,
        }
        true
    }

    fn start_source(&self, stream_id: u64, req: FileManifestRequest) {
        let key = (req.transfer_id.clone(), req.task_index, Role::Source);
        let Some(registered) = self.register(key, None) else {
            return;
        };
        let span = tracing::info_span!("file_source", transfer_id = %req.transfer_id, task = req.task_index);
        let ctx = source::SourceCtx {
            service: self.service.clone(),
            out: self.out.clone(),
        };
        self.tracker.spawn(
            async move {
                let cancel = registered.cancel.clone();
                source::run_source(ctx, stream_id, req, cancel).await;
                drop(registered);
            }
            .instrument(span),
        );
    }

    fn start_download(&self, stream_id: u64, start: FileStart) {
        let key = (start.transfer_id.clone(), start.task_index, Role::Download);
        let (peers_tx, peers_rx) = mpsc::channel(PEER_SET_QUEUE);
        let Some(registered) = self.register(key, Some(peers_tx)) else {
            return;
        };
        let span = tracing::info_span!("file_download", transfer_id = %start.transfer_id, task = start.task_index);
        let ctx = DownloadCtx::new(
            self.service.clone(),
            self.direct.clone(),
            self.out.clone(),
            self.agent.clone(),
            stream_id,
            &start,
        );
        self.tracker.spawn(
            async move {
                let cancel = registered.cancel.clone();
                download::run(ctx, stream_id, start, peers_rx, cancel).await;
                drop(registered);
            }
            .instrument(span),
        );
    }

    fn peer_set(&self, set: PeerSet) {
        let key = (set.transfer_id.clone(), set.task_index, Role::Download);
        let tx = self.live.lock().get(&key).and_then(|t| t.peers.clone());
        match tx {
            Some(tx) => {
                if tx.try_send(set.peers).is_err() {
                    tracing::warn!(transfer_id = %set.transfer_id, "PeerSet dropped: the download is behind on peer updates");
                }
            }
            None => {
                tracing::debug!(transfer_id = %set.transfer_id, "PeerSet for a task not downloading here")
            }
        }
    }

    /// Stops the transfer's tasks here (all of them when `task_indexes` is
    /// empty).
    fn cancel(&self, c: &CancelTransfer) {
        let live = self.live.lock();
        let mut n = 0;
        for ((transfer_id, index, _), task) in live.iter() {
            if *transfer_id == c.transfer_id
                && (c.task_indexes.is_empty() || c.task_indexes.contains(index))
            {
                task.cancel.cancel();
                n += 1;
            }
        }
        tracing::info!(transfer_id = %c.transfer_id, tasks = n, reason = %c.reason, "transfer cancelled");
    }

    /// File tasks running (sources serving, downloads, finished targets
    /// still serving).
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }

    /// Cancels every task and waits (bounded) until they have cleaned up;
    /// the store is emptied. The outbound queue's receiver must be gone or
    /// drained meanwhile.
    pub async fn cancel_all(&self) {
        let live = self.live();
        if live > 0 {
            tracing::warn!(
                tasks = live,
                "cancelling every file transfer task: the link to the server ended"
            );
        }
        self.all.cancel();
        self.tracker.close();
        if tokio::time::timeout(CANCEL_WAIT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(wait = ?CANCEL_WAIT, "some file transfer tasks did not end after being cancelled");
        }
        self.service.store.clear();
    }

    fn register(&self, key: LiveKey, peers: Option<mpsc::Sender<Vec<Peer>>>) -> Option<Registered> {
        let mut live = self.live.lock();
        if live.contains_key(&key) {
            tracing::warn!(transfer_id = %key.0, task = key.1, role = ?key.2, "file task already running here; ignoring the duplicate");
            return None;
        }
        let cancel = self.all.child_token();
        live.insert(
            key.clone(),
            LiveTask {
                cancel: cancel.clone(),
                peers,
            },
        );
        Some(Registered {
            live: self.live.clone(),
            key,
            cancel,
        })
    }
}

impl Drop for FileRunner {
    /// A runner dropped without `cancel_all` still stops its tasks.
    fn drop(&mut self) {
        self.all.cancel();
    }
}

/// A live task's entry, removed when the task ends.
struct Registered {
    live: Live,
    key: LiveKey,
    cancel: CancellationToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.live.lock().remove(&self.key);
    }
}

fn decoded<M: prost::Message + Default>(frame: &Frame) -> Option<M> {
    frame
        .decode()
        .map_err(|e| tracing::warn!(error = %e, "ignoring a file frame that does not decode"))
        .ok()
}

//! Large files in pieces from peers (F1), with direct fallback (F3) and
//! refetch of refused pieces (F5).
//!
//! A [`Swarm`] is one task's scheduler: a single loop owns all state (no
//! locks), and everything slow (connecting, reading a peer, verifying and
//! writing a piece, fetching direct, finishing a file) runs in its own
//! tokio or blocking task that reports back as an [`Event`]. Each turn of
//! the loop opens writers for the next files (at most
//! [`MAX_ACTIVE_FILES`]), keeps every usable peer busy with up to
//! [`PER_PEER_DEPTH`] requests (rarest piece first among the first few
//! missing, so files arrive roughly in order and are checked as they come;
//! from the source only pieces no other peer has, so it sends about one
//! copy), within
//! `max_inflight_mb` of piece bytes, and fetches direct what P2P cannot
//! provide: pieces that failed `p2p_attempts` times, and, while the source
//! is unreachable over P2P for [`FALLBACK_AFTER`], pieces no connected peer
//! has. Every piece is verified before it is written; a corrupt one counts
//! against its peer (banned after [`PEER_MAX_FAILURES`]) and is fetched
//! again elsewhere. Pieces are served on (store) as soon as written.
//!
//! `peers.rs` holds peer connections, `pieces.rs` file and piece state
//! (writers, verification), `requests.rs` asking peers, `fallback.rs`
//! fetching direct.

mod fallback;
mod peers;
mod pieces;
mod requests;

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use gse_proto::link::{Have, Peer, PeerHelloAck};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DownloadCtx, Plan};
use crate::file::codes::Failure;
use crate::file::direct::DirectError;
use crate::file::install::InstallOptions;
use crate::file::peer::Outgoing;
use crate::file::store::TaskShare;
use crate::file::wire::PieceDataBody;
use crate::file::writer::PieceWriter;

use peers::PeerState;
use pieces::{FileSlot, Phase};

/// Files assembled at once (each holds a temp file open).
pub const MAX_ACTIVE_FILES: usize = 8;
/// Requests in flight to one peer.
pub const PER_PEER_DEPTH: usize = 3;
/// A request unanswered this long fails (and its connection is dropped).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the source may be unreachable over P2P before pieces nobody
/// else has are fetched direct.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// Without progress this long, the source may be asked for any piece,
/// not only for those no other peer has.
const SOURCE_ESCAPE: Duration = Duration::from_secs(5);
/// Direct fetches in flight per task.
const DIRECT_DEPTH: usize = 2;
/// Bad pieces or errors from one peer before it is dropped for the task.
pub const PEER_MAX_FAILURES: u32 = 3;
/// Longest sleep of the loop when nothing happens.
const TICK: Duration = Duration::from_millis(250);
/// Events queued for the loop.
const EVENT_QUEUE: usize = 64;
/// Finished files served from an open handle; past this, by path.
const MAX_SERVED_HANDLES: usize = 256;

/// What a finished piece of work tells the loop.
// Variants differ in size (a writer, an ack), but events live only in one
// bounded queue and are moved once: boxing would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Event {
    Connected {
        peer: usize,
        attempt: u64,
        ack: PeerHelloAck,
        tx: mpsc::Sender<Outgoing>,
        expected: Arc<AtomicUsize>,
    },
    ConnectFailed {
        peer: usize,
        attempt: u64,
        error: String,
    },
    Data {
        peer: usize,
        attempt: u64,
        body: PieceDataBody,
    },
    Have {
        peer: usize,
        attempt: u64,
        have: Have,
    },
    Closed {
        peer: usize,
        attempt: u64,
        reason: String,
    },
    Opened {
        slot: usize,
        result: Result<(PieceWriter, File), Failure>,
    },
    Written {
        slot: usize,
        piece: u32,
        len: u64,
        via: Via,
        result: Result<(), WriteError>,
    },
    Direct {
        slot: usize,
        piece: u32,
        len: u64,
        result: Result<Bytes, DirectError>,
    },
    Finished {
        slot: usize,
        result: Result<(), Failure>,
    },
}

/// Where a piece came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    Peer(usize),
    Direct,
}

/// Why a received piece was not written.
pub(super) enum WriteError {
    /// It did not match its hash: fetch it elsewhere.
    Corrupt(String),
    /// The disk failed us: the task fails.
    Fatal(Failure),
}

/// A request in flight to a peer.
struct Request {
    peer: usize,
    slot: usize,
    piece: u32,
    len: u64,
    deadline: Instant,
}

/// One task's P2P download of its large files.
pub struct Swarm {
    ctx: Arc<DownloadCtx>,
    share: Arc<TaskShare>,
    opts: InstallOptions,
    files: Vec<FileSlot>,
    by_entry: HashMap<u32, usize>,
    next_open: usize,
    peers: Vec<PeerState>,
    requests: HashMap<u64, Request>,
    next_request: u64,
    inflight_bytes: u64,
    direct_inflight: usize,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    peer_updates: mpsc::Receiver<Vec<Peer>>,
    initial_peers: Vec<Peer>,
    source_down_since: Option<Instant>,
    last_progress: Instant,
    rng: StdRng,
    /// Ends every connection and job of the swarm; cancelled on drop.
    stop: CancellationToken,
    served_handles: usize,
}

// === impl Swarm ===

impl Swarm {
    pub fn new(
        ctx: Arc<DownloadCtx>,
        plan: &Plan,
        share: Arc<TaskShare>,
        peers: Vec<Peer>,
        peer_updates: mpsc::Receiver<Vec<Peer>>,
    ) -> Self {
        let files: Vec<FileSlot> = plan
            .large_files()
            .into_iter()
            .filter_map(|(i, direct)| FileSlot::new(plan, i, direct))
            .collect();
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        Swarm {
            by_entry: files
                .iter()
                .enumerate()
                .map(|(s, f)| (f.entry, s))
                .collect(),
            ctx,
            share,
            opts: plan.opts.clone(),
            files,
            next_open: 0,
            peers: Vec::new(),
            requests: HashMap::new(),
            next_request: 1,
            inflight_bytes: 0,
            direct_inflight: 0,
            events_tx,
            events,
            peer_updates,
            initial_peers: peers,
            source_down_since: None,
            last_progress: Instant::now(),
            rng: StdRng::from_os_rng(),
            stop: CancellationToken::new(),
            served_handles: 0,
        }
    }

    /// Downloads every large file; returns when all are installed (or
    /// cached), or with the first failure.
    pub async fn run(mut self) -> Result<(), Failure> {
        if self.files.is_empty() {
            return Ok(());
        }
        let initial = std::mem::take(&mut self.initial_peers);
        self.set_peers(initial);
        if self.peers.is_empty() {
            // Nobody to wait for: fetch direct from the start.
            self.source_down_since = Instant::now().checked_sub(FALLBACK_AFTER);
        }
        loop {
            self.open_files();
            if self.files.iter().all(|f| f.phase == Phase::Done) {
                return Ok(());
            }
            let now = Instant::now();
            self.track_source(now);
            self.schedule_p2p(now);
            self.schedule_direct(now);
            let wake = self.next_wake(now);
            tokio::select! {
                Some(event) = self.events.recv() => {
                    self.on_event(event)?;
                    while let Ok(event) = self.events.try_recv() {
                        self.on_event(event)?;
                    }
                }
                Some(list) = self.peer_updates.recv() => self.set_peers(list),
                _ = tokio::time::sleep_until(wake) => self.on_tick(Instant::now()),
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Connected {
                peer,
                attempt,
                ack,
                tx,
                expected,
            } => self.on_connected(peer, attempt, ack, tx, expected),
            Event::ConnectFailed {
                peer,
                attempt,
                error,
            } => self.on_connect_failed(peer, attempt, &error),
            Event::Data {
                peer,
                attempt,
                body,
            } => self.on_data(peer, attempt, body),
            Event::Have {
                peer,
                attempt,
                have,
            } => self.on_have(peer, attempt, have),
            Event::Closed {
                peer,
                attempt,
                reason,
            } => {
                if self.peers[peer].attempt == attempt {
                    self.disconnect(peer, &reason);
                }
            }
            Event::Opened { slot, result } => self.on_opened(slot, result)?,
            Event::Written {
                slot,
                piece,
                len,
                via,
                result,
            } => self.on_written(slot, piece, len, via, result)?,
            Event::Direct {
                slot,
                piece,
                len,
                result,
            } => self.on_direct(slot, piece, len, result)?,
            Event::Finished { slot, result } => self.on_finished(slot, result)?,
        }
        Ok(())
    }

    /// Notes since when no source is reachable over P2P.
    fn track_source(&mut self, now: Instant) {
        if self.peers.iter().any(PeerState::source_reachable) {
            self.source_down_since = None;
        } else if self.source_down_since.is_none() {
            self.source_down_since = Some(now);
        }
    }

    /// Whether pieces no connected peer has go direct now.
    fn fallback_active(&self, now: Instant) -> bool {
        self.source_down_since
            .is_some_and(|since| now - since >= FALLBACK_AFTER)
    }

    /// When the loop must look again even if nothing is reported.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + TICK;
        for peer in &self.peers {
            if let Some(t) = peer.wake_at(now) {
                wake = wake.min(t);
            }
        }
        if let Some(since) = self.source_down_since {
            let t = since + FALLBACK_AFTER;
            if t > now {
                wake = wake.min(t);
            }
        }
        wake
    }

    fn on_tick(&mut self, now: Instant) {
        self.expire_requests(now);
        self.reconnect_due(now);
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

//! The swarm's files and pieces: opening writers, choosing and requesting
//! pieces, verifying and writing them, direct fallback, finishing files.
//!
//! Per file, `have` is what is verified and written, `busy` what P2P must
//! not pick (in flight, being written, or set aside for direct), and
//! `direct_wanted` what must come direct (failed `p2p_attempts` times, or
//! the node asked for the file direct).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use gse_proto::link::{PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use super::peers::Link;
use super::{
    DIRECT_DEPTH, Event, MAX_ACTIVE_FILES, MAX_SERVED_HANDLES, PEER_MAX_FAILURES, REQUEST_TIMEOUT,
    Request, SOURCE_ESCAPE, Swarm, Via, WriteError,
};
use crate::file::codes::{self, Failure};
use crate::file::digest::FileDigest;
use crate::file::direct::DirectError;
use crate::file::download::Plan;
use crate::file::download::small::{DIRECT_ATTEMPTS, unobtainable};
use crate::file::manifest::EntryKind;
use crate::file::peer::Outgoing;
use crate::file::picker::{Availability, Window, pick_rarest_in};
use crate::file::piece_set::PieceSet;
use crate::file::store::Source;
use crate::file::target_path::TargetPath;
use crate::file::wire::PieceDataBody;
use crate::file::writer::{PieceError, PieceWriter};

/// Pieces considered per pick, from the first one missing: rarest first
/// among these, so a file arrives roughly in order and its whole-file
/// check (`check_as_written`) keeps up instead of running at the end.
const PICK_WINDOW: usize = 64;
/// Pieces at the front of the file that go before rarer ones.
const FRONT: u32 = 4;
/// ... once this many peers hold them.
const FRONT_MIN_HOLDERS: u32 = 2;
/// Pieces a source is asked for are chosen among this many (the first
/// ones only it has).
const SOURCE_WINDOW: usize = 4;
/// Longest wait after a peer answered "busy" (grows with repeats).
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Waiting,
    Opening,
    Active,
    Finishing,
    Done,
}

type SharedWriter = Arc<Mutex<Option<PieceWriter>>>;

/// One large file of the task.
pub(super) struct FileSlot {
    pub entry: u32,
    pub path: String,
    pub target: TargetPath,
    pub digest: FileDigest,
    pub mode: u32,
    pub phase: Phase,
    writer: Option<SharedWriter>,
    /// Every piece: a source's bitmap when it sends none.
    pub all: PieceSet,
    pub have: PieceSet,
    /// The first piece not in `have`.
    cursor: u32,
    pub busy: PieceSet,
    pub direct_wanted: PieceSet,
    pub direct_busy: PieceSet,
    /// Non-source connected peers holding each piece.
    pub avail: Availability,
    failures: Vec<u8>,
    direct_failures: Vec<u8>,
}

// === impl FileSlot ===

impl FileSlot {
    pub fn new(plan: &Plan, index: usize, direct: bool) -> Option<Self> {
        let entry = &plan.entries[index];
        let EntryKind::File(digest) = &entry.kind else {
            return None;
        };
        let n = digest.piece_count();
        let mut slot = FileSlot {
            entry: index as u32,
            path: entry.path.clone(),
            target: plan.targets[index].clone(),
            digest: digest.clone(),
            mode: entry.mode,
            phase: Phase::Waiting,
            writer: None,
            all: PieceSet::full(n),
            have: PieceSet::new(n),
            cursor: 0,
            busy: PieceSet::new(n),
            direct_wanted: PieceSet::new(n),
            direct_busy: PieceSet::new(n),
            avail: Availability::new(n),
            failures: vec![0; n as usize],
            direct_failures: vec![0; n as usize],
        };
        if direct {
            slot.direct_wanted = PieceSet::full(n);
            slot.busy = PieceSet::full(n);
        }
        Some(slot)
    }

    /// The first missing piece within [`FRONT`] of the cursor that
    /// `theirs` has, nobody is fetching, and at least [`FRONT_MIN_HOLDERS`]
    /// peers hold: taken before rarer ones, so the in-order check never
    /// waits long for the front of the file (rarest-first alone would leave
    /// a common piece for last), without all asking one holder at once.
    fn front_piece(&self, theirs: &PieceSet) -> Option<u32> {
        let end = self.cursor.saturating_add(FRONT).min(self.have.len());
        (self.cursor..end).find(|&p| {
            theirs.contains(p)
                && !self.have.contains(p)
                && !self.busy.contains(p)
                && self.avail.count(p) >= FRONT_MIN_HOLDERS
        })
    }

    fn piece_len(&self, piece: u32) -> u64 {
        self.digest
            .piece_range(piece)
            .map_or(0, |(_, len)| len as u64)
    }
}

// === impl Swarm: files ===

impl Swarm {
    /// Opens writers for waiting files while fewer than the limit are open.
    pub(super) fn open_files(&mut self) {
        let open = self
            .files
            .iter()
            .filter(|f| matches!(f.phase, Phase::Opening | Phase::Active))
            .count();
        for _ in open..MAX_ACTIVE_FILES {
            let Some(slot) = (self.next_open < self.files.len()).then_some(self.next_open) else {
                return;
            };
            self.next_open += 1;
            let file = &mut self.files[slot];
            file.phase = Phase::Opening;
            let (target, digest, mode, opts) = (
                file.target.clone(),
                file.digest.clone(),
                file.mode,
                self.opts.clone(),
            );
            let events = self.events_tx.clone();
            tokio::spawn(async move {
                let opened = tokio::task::spawn_blocking(move || {
                    let writer =
                        PieceWriter::create(target, digest, mode, &opts)?.check_as_written();
                    let handle = writer.share_handle()?;
                    Ok::<_, PieceError>((writer, handle))
                })
                .await;
                let result = match opened {
                    Ok(r) => r.map_err(Failure::from),
                    Err(e) => Err(Failure::new(codes::WRITE, e.to_string())),
                };
                let _ = events.send(Event::Opened { slot, result }).await;
            });
        }
    }

    pub(super) fn on_opened(
        &mut self,
        slot: usize,
        result: Result<(PieceWriter, std::fs::File), Failure>,
    ) -> Result<(), Failure> {
        let (writer, handle) = result?;
        let file = &mut self.files[slot];
        file.phase = Phase::Active;
        file.writer = Some(Arc::new(Mutex::new(Some(writer))));
        self.share.set_source(
            file.entry as usize,
            Source::Local {
                file: Arc::new(handle),
                have: PieceSet::new(file.digest.piece_count()),
            },
        );
        if file.have.is_full() {
            self.start_finish(slot);
        }
        Ok(())
    }

    fn start_finish(&mut self, slot: usize) {
        let file = &mut self.files[slot];
        file.phase = Phase::Finishing;
        let writer = file.writer.take().expect("an active file has a writer");
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let finished = tokio::task::spawn_blocking(move || match writer.lock().take() {
                Some(w) => w.finish().map_err(Failure::from),
                None => Ok(()),
            })
            .await;
            let result =
                finished.unwrap_or_else(|e| Err(Failure::new(codes::INSTALL, e.to_string())));
            let _ = events.send(Event::Finished { slot, result }).await;
        });
    }

    pub(super) fn on_finished(
        &mut self,
        slot: usize,
        result: Result<(), Failure>,
    ) -> Result<(), Failure> {
        result?;
        let file = &mut self.files[slot];
        file.phase = Phase::Done;
        self.ctx.stats.files_done.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(path = %file.path, "file installed");
        self.served_handles += 1;
        if self.served_handles > MAX_SERVED_HANDLES {
            // Too many open files: serve this one by path (verified reads).
            self.share
                .set_source(file.entry as usize, Source::Seed(file.target.path().into()));
        }
        Ok(())
    }
}

// === impl Swarm: requesting over P2P ===

impl Swarm {
    /// Gives every usable peer requests up to its depth, within the
    /// in-flight byte budget; non-source peers first.
    pub(super) fn schedule_p2p(&mut self, now: Instant) {
        if self.peers.is_empty() {
            return;
        }
        let escape = now - self.last_progress > SOURCE_ESCAPE;
        let start = self.rng.random_range(0..self.peers.len());
        for source_pass in [false, true] {
            for k in 0..self.peers.len() {
                let id = (start + k) % self.peers.len();
                if self.peers[id].is_source != source_pass {
                    continue;
                }
                while self.peers[id].can_take(now)
                    && self.inflight_bytes < self.ctx.service.settings.max_inflight_bytes
                {
                    let Some((slot, piece)) = self.pick_for(id, escape) else {
                        break;
                    };
                    self.send_request(id, slot, piece, now);
                }
            }
        }
    }

    /// The next piece to ask peer `id` for: rarest first among what it has
    /// and we lack; from a source only pieces no other peer has, unless
    /// nothing arrived for a while.
    fn pick_for(&mut self, id: usize, escape: bool) -> Option<(usize, u32)> {
        let Swarm {
            files, peers, rng, ..
        } = self;
        let peer = &peers[id];
        for (slot, file) in files.iter().enumerate() {
            if file.phase != Phase::Active {
                continue;
            }
            let theirs = match peer.have.get(&file.entry) {
                Some(set) => set,
                None if peer.is_source => &file.all,
                None => continue,
            };
            // From a source: one of the first few pieces nobody else has,
            // so it sends the file about once and roughly in order.
            let window = match (peer.is_source, escape) {
                (true, false) => Window {
                    from: file.cursor,
                    len: SOURCE_WINDOW,
                    max_count: Some(0),
                },
                _ => Window {
                    from: file.cursor,
                    len: PICK_WINDOW,
                    max_count: None,
                },
            };
            let front = (!peer.is_source)
                .then(|| file.front_piece(theirs))
                .flatten();
            let picked = front.or_else(|| {
                pick_rarest_in(&file.have, theirs, &file.busy, &file.avail, window, rng)
            });
            if let Some(piece) = picked {
                return Some((slot, piece));
            }
        }
        None
    }

    fn send_request(&mut self, id: usize, slot: usize, piece: u32, now: Instant) {
        let file = &mut self.files[slot];
        let len = file.piece_len(piece);
        file.busy.insert(piece);
        let request_id = self.next_request;
        self.next_request += 1;
        let req = PieceRequest {
            transfer_id: self.ctx.transfer_id.clone(),
            task_index: self.ctx.task_index,
            entry_index: file.entry,
            piece,
            request_id,
        };
        let out = Outgoing::Frame(Frame::new(MsgType::PieceRequest, request_id, &req));
        let peer = &mut self.peers[id];
        peer.inflight += 1;
        self.inflight_bytes += len;
        let Link::Up { tx, expected, .. } = &peer.link else {
            unreachable!("requests go to connected peers only");
        };
        expected.fetch_add(1, Ordering::AcqRel);
        let at = self.ctx.limits.reserve(len);
        if at <= now {
            // The queue is deeper than PER_PEER_DEPTH: full only if broken.
            let _ = tx.try_send(out);
        } else {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let _ = tx.send(out).await;
            });
        }
        let wait = at.saturating_duration_since(now);
        self.requests.insert(
            request_id,
            Request {
                peer: id,
                slot,
                piece,
                len,
                deadline: now + wait + REQUEST_TIMEOUT,
            },
        );
    }

    pub(super) fn on_data(&mut self, id: usize, attempt: u64, body: PieceDataBody) {
        if self.peers[id].attempt != attempt {
            return;
        }
        let Some(req) = self.requests.remove(&body.request_id) else {
            return;
        };
        self.peers[id].inflight = self.peers[id].inflight.saturating_sub(1);
        let matches = req.peer == id
            && body.entry_index == self.files[req.slot].entry
            && body.piece == req.piece;
        match PieceStatus::try_from(body.status) {
            Ok(PieceStatus::PieceOk) if matches => {
                self.peers[id].busy_streak = 0;
                self.spawn_write(req.slot, req.piece, req.len, body.data, Via::Peer(id));
            }
            Ok(PieceStatus::PieceBusy) => {
                self.release(&req);
                self.ctx.limits.refund(req.len);
                let peer = &mut self.peers[id];
                peer.busy_streak += 1;
                let base = Duration::from_millis(10) * peer.busy_streak.min(20);
                let jitter = self.rng.random_range(0..=base.as_millis() as u64);
                peer.busy_until =
                    Instant::now() + (base + Duration::from_millis(jitter)).min(BUSY_BACKOFF_MAX);
            }
            Ok(PieceStatus::PieceMissing) => {
                self.release(&req);
                self.ctx.limits.refund(req.len);
                self.peer_lacks(id, req.slot, req.piece);
            }
            _ => {
                self.release(&req);
                let why = if matches {
                    body.message
                } else {
                    "answered for another piece".into()
                };
                tracing::warn!(peer = %self.peers[id].agent, path = %self.files[req.slot].path, piece = req.piece, error = %why, "peer could not serve a piece");
                self.piece_failed(req.slot, req.piece, Some(id));
            }
        }
    }

    /// A request ended without data: the piece may be picked again.
    pub(super) fn release(&mut self, req: &Request) {
        let file = &mut self.files[req.slot];
        if !file.direct_wanted.contains(req.piece) {
            file.busy.remove(req.piece);
        }
        self.inflight_bytes = self.inflight_bytes.saturating_sub(req.len);
    }

    /// A piece failed over P2P (from `peer`, if it was the peer's fault):
    /// after `p2p_attempts` failures it goes direct.
    pub(super) fn piece_failed(&mut self, slot: usize, piece: u32, peer: Option<usize>) {
        let file = &mut self.files[slot];
        let n = &mut file.failures[piece as usize];
        *n = n.saturating_add(1);
        if u32::from(*n) >= self.ctx.p2p_attempts && !file.have.contains(piece) {
            file.direct_wanted.insert(piece);
            file.busy.insert(piece);
        }
        if let Some(id) = peer {
            self.peers[id].failures += 1;
            if self.peers[id].failures >= PEER_MAX_FAILURES {
                self.ban(id, "too many bad pieces or errors");
            }
        }
    }

    /// Fails requests that went unanswered; their connections are dropped.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for rid in expired {
            let Some(req) = self.requests.remove(&rid) else {
                continue;
            };
            self.peers[req.peer].inflight = self.peers[req.peer].inflight.saturating_sub(1);
            self.release(&req);
            self.piece_failed(req.slot, req.piece, Some(req.peer));
            if !matches!(self.peers[req.peer].link, Link::Gone) {
                self.disconnect(req.peer, "a request went unanswered");
            }
        }
    }
}

// === impl Swarm: writing ===

impl Swarm {
    /// Verifies and writes a piece on the blocking pool.
    fn spawn_write(&mut self, slot: usize, piece: u32, len: u64, data: Bytes, via: Via) {
        let Some(writer) = self.files[slot].writer.clone() else {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
            return;
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let written = tokio::task::spawn_blocking(move || match writer.lock().as_mut() {
                Some(w) => w.write_piece(piece, &data).map(|_| ()),
                None => Ok(()),
            })
            .await;
            let result = match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e @ PieceError::Corrupt { .. })) => Err(WriteError::Corrupt(e.to_string())),
                Ok(Err(e)) => Err(WriteError::Fatal(e.into())),
                Err(e) => Err(WriteError::Fatal(Failure::new(codes::WRITE, e.to_string()))),
            };
            let _ = events
                .send(Event::Written {
                    slot,
                    piece,
                    len,
                    via,
                    result,
                })
                .await;
        });
    }

    pub(super) fn on_written(
        &mut self,
        slot: usize,
        piece: u32,
        len: u64,
        via: Via,
        result: Result<(), WriteError>,
    ) -> Result<(), Failure> {
        self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
        let file = &mut self.files[slot];
        match result {
            Ok(()) => {
                file.have.insert(piece);
                while file.have.contains(file.cursor) {
                    file.cursor += 1;
                }
                file.busy.remove(piece);
                file.direct_wanted.remove(piece);
                self.ctx.stats.add(len, via == Via::Direct);
                self.share.gained(file.entry, piece);
                self.last_progress = Instant::now();
                if file.have.is_full() && file.phase == Phase::Active {
                    self.start_finish(slot);
                }
                Ok(())
            }
            Err(WriteError::Corrupt(why)) => {
                tracing::warn!(path = %file.path, piece, via = ?via, error = %why, "refused a corrupt piece; fetching it again");
                match via {
                    Via::Peer(id) => {
                        if !file.direct_wanted.contains(piece) {
                            file.busy.remove(piece);
                        }
                        self.piece_failed(slot, piece, Some(id));
                        Ok(())
                    }
                    Via::Direct => self.direct_failed(slot, piece, &why),
                }
            }
            Err(WriteError::Fatal(f)) => Err(f),
        }
    }
}

// === impl Swarm: direct fallback ===

impl Swarm {
    /// Starts direct fetches for pieces that need them, a few at a time.
    pub(super) fn schedule_direct(&mut self, now: Instant) {
        let fallback = self.fallback_active(now);
        while self.direct_inflight < DIRECT_DEPTH {
            let Some((slot, piece)) = self.pick_direct(fallback) else {
                return;
            };
            self.fetch_direct(slot, piece);
        }
    }

    /// A piece set aside for direct; or, in fallback, one no connected
    /// peer has.
    fn pick_direct(&self, fallback: bool) -> Option<(usize, u32)> {
        let active = || {
            self.files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.phase == Phase::Active)
        };
        for (slot, f) in active() {
            if let Some(p) = f.direct_wanted.iter().find(|&p| !f.direct_busy.contains(p)) {
                return Some((slot, p));
            }
        }
        if !fallback {
            return None;
        }
        for (slot, f) in active() {
            let orphan = f
                .have
                .missing()
                .find(|&p| !f.busy.contains(p) && f.avail.count(p) == 0);
            if let Some(p) = orphan {
                return Some((slot, p));
            }
        }
        None
    }

    fn fetch_direct(&mut self, slot: usize, piece: u32) {
        let file = &mut self.files[slot];
        let len = file.piece_len(piece);
        file.busy.insert(piece);
        file.direct_busy.insert(piece);
        self.direct_inflight += 1;
        self.inflight_bytes += len;
        let (ctx, entry, events, stop) = (
            self.ctx.clone(),
            file.entry,
            self.events_tx.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            let fetched = async {
                ctx.limits.acquire(len).await;
                ctx.direct
                    .fetch(&ctx.transfer_id, ctx.task_index, entry, piece)
                    .await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = fetched => r,
            };
            let _ = events
                .send(Event::Direct {
                    slot,
                    piece,
                    len,
                    result,
                })
                .await;
        });
    }

    pub(super) fn on_direct(
        &mut self,
        slot: usize,
        piece: u32,
        len: u64,
        result: Result<Bytes, DirectError>,
    ) -> Result<(), Failure> {
        self.direct_inflight -= 1;
        self.files[slot].direct_busy.remove(piece);
        match result {
            Ok(data) => {
                self.spawn_write(slot, piece, len, data, Via::Direct);
                Ok(())
            }
            Err(e) => {
                self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
                if e == DirectError::Busy {
                    self.ctx.limits.refund(len);
                    let file = &mut self.files[slot];
                    if !file.direct_wanted.contains(piece) {
                        file.busy.remove(piece);
                    }
                    return Ok(());
                }
                self.direct_failed(slot, piece, &e.to_string())
            }
        }
    }

    /// A direct fetch brought nothing usable: retry, up to a limit.
    fn direct_failed(&mut self, slot: usize, piece: u32, why: &str) -> Result<(), Failure> {
        let file = &mut self.files[slot];
        if !file.direct_wanted.contains(piece) {
            file.busy.remove(piece);
        }
        let n = &mut file.direct_failures[piece as usize];
        *n = n.saturating_add(1);
        tracing::warn!(path = %file.path, piece, failures = *n, error = %why, "direct fetch failed");
        if u32::from(*n) >= DIRECT_ATTEMPTS {
            return Err(unobtainable(&file.path, piece, u32::from(*n), why));
        }
        Ok(())
    }
}

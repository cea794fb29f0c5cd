//! The swarm's files and pieces: opening writers, choosing and requesting
//! pieces, verifying and writing them, direct fallback, finishing files.
//!
//! Per file, `have` is what is verified and written, `busy` what P2P must
//! not pick (in flight, being written, or set aside for direct), and
//! `direct_wanted` what must come direct (failed `p2p_attempts` times, or
//! the node asked for the file direct).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Event, MAX_ACTIVE_FILES, MAX_SERVED_HANDLES, Swarm, Via, WriteError};
use crate::file::codes::{self, Failure};
use crate::file::digest::FileDigest;
use crate::file::download::Plan;
use crate::file::manifest::EntryKind;
use crate::file::picker::Availability;
use crate::file::piece_set::PieceSet;
use crate::file::store::Source;
use crate::file::target_path::TargetPath;
use crate::file::writer::{PieceError, PieceWriter};

/// Pieces at the front of the file that go before rarer ones.
const FRONT: u32 = 4;
/// ... once this many peers hold them.
const FRONT_MIN_HOLDERS: u32 = 2;

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
    pub cursor: u32,
    pub busy: PieceSet,
    pub direct_wanted: PieceSet,
    pub direct_busy: PieceSet,
    /// Non-source connected peers holding each piece.
    pub avail: Availability,
    pub failures: Vec<u8>,
    pub direct_failures: Vec<u8>,
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
    pub fn front_piece(&self, theirs: &PieceSet) -> Option<u32> {
        let end = self.cursor.saturating_add(FRONT).min(self.have.len());
        (self.cursor..end).find(|&p| {
            theirs.contains(p)
                && !self.have.contains(p)
                && !self.busy.contains(p)
                && self.avail.count(p) >= FRONT_MIN_HOLDERS
        })
    }

    pub fn piece_len(&self, piece: u32) -> u64 {
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

// === impl Swarm: writing ===

impl Swarm {
    /// Verifies and writes a piece on the blocking pool.
    pub(super) fn spawn_write(&mut self, slot: usize, piece: u32, len: u64, data: Bytes, via: Via) {
        let Some(writer) = self.files[slot].writer.clone() else {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
            return;
        };
        if let Via::Peer(id) = via {
            self.peers[id].verifying += 1;
        }
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
        if let Via::Peer(id) = via {
            let peer = &mut self.peers[id];
            peer.verifying = peer.verifying.saturating_sub(1);
        }
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

//! The agent's on-disk spool: a bounded, crash-safe, append-only queue of
//! [`SpoolBatch`]es waiting for the DataServer to acknowledge them (D5).
//!
//! Start at [`Spool`]. It is a segmented log: `<dir>/<first_seq:020>.seg`
//! files of checksummed entries ([`entry`] has the format) plus a 32-byte
//! `<dir>/cursor` holding the first un-acked seq ([`cursor`]). `push` is one
//! `write` to the active segment (plus `fdatasync` per [`SyncPolicy`]);
//! `ack` is one 16-byte in-place cursor write, and whole segments behind the
//! cursor are unlinked. Why not redb: a B-tree pays page copies, a
//! free-list and a commit per transaction for a FIFO that only ever appends
//! at one end and trims at the other; a log does one sequential write per
//! batch, so the spool is never the bottleneck, and recovery is a linear
//! scan of one segment. When full, the oldest *segment* is dropped (never
//! the newest data) and the drop is counted; segments are at most a quarter
//! of `max_bytes`, so one drop frees a bounded share. Only the tail segment
//! can be torn by a crash; `open` checks it entry by entry and truncates at
//! the first bad one. A bad entry met later in a sealed segment (bit rot)
//! ends that segment: the rest is skipped and counted, never returned.
//! The API is synchronous; async callers use `spawn_blocking`. Batching,
//! sending and the decision to spool live in the sender, not here.

mod cursor;
mod entry;
mod files;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use cursor::CursorFile;
use entry::{HEADER_LEN, PEEK_LEN};
use files::{
    create_segment, list_segments, open_append, recover_tail, remove_acked_segments,
    remove_segment_file, sync_dir,
};

/// Default segment size: big enough that rolls are rare, small enough that
/// recovery (which reads the tail segment) stays well under a second.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest segment the spool will use, whatever `max_bytes` is.
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;
/// Smallest `max_bytes` accepted: room for a few minimal segments.
pub const MIN_MAX_BYTES: u64 = 4 * MIN_SEGMENT_BYTES;

const CURSOR_FILE: &str = "cursor";

/// One data id's records, as queued for the DataServer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolBatch {
    pub data_id: u32,
    pub records: Vec<Bytes>,
}

/// Position of a batch in the spool. Assigned by `push`, strictly
/// increasing, never reused (also across reopen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNo(pub u64);

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When the spool calls `fdatasync`.
///
/// Either policy survives a *process* crash (SIGKILL) without loss: every
/// `push` and `ack` has reached the kernel before it returns. The policy only
/// matters for an OS crash or power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync the segment on every `push` and the cursor on every `ack`.
    Always,
    /// Sync after every N writes (pushes and acks together); a power loss
    /// may lose up to N-1 recent pushes or bring back up to N-1 recent acks.
    EveryN(u32),
}

/// How a spool is sized and synced.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// Upper bound on the spool's files on disk (segments; the cursor file
    /// is not counted).
    pub max_bytes: u64,
    /// Target segment size; clamped to `[MIN_SEGMENT_BYTES, max_bytes / 4]`.
    pub segment_bytes: u64,
    pub sync: SyncPolicy,
}

impl SpoolOptions {
    /// `max_bytes` with the default segment size and [`SyncPolicy::Always`].
    pub fn new(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync: SyncPolicy::Always,
        }
    }

    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .min(self.max_bytes / 4)
            .max(MIN_SEGMENT_BYTES)
    }
}

/// What a `push` cost: its seq, and the oldest data dropped to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    pub seq: SeqNo,
    pub dropped_batches: u64,
    pub dropped_bytes: u64,
}

/// Counters since `open` (for metrics and alarms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Un-acked batches dropped because the spool was full.
    pub dropped_batches: u64,
    /// Encoded bytes of those batches.
    pub dropped_bytes: u64,
    /// Batches skipped because their entry (or one before it in the same
    /// segment) failed its checksum in a sealed segment.
    pub corrupt_batches: u64,
    /// Bytes cut from the tail segment at `open` (a torn or corrupt tail).
    pub truncated_tail_bytes: u64,
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "batch of {size} encoded bytes does not fit the spool at {dir} \
         (max_bytes {max_bytes}, entry limit 4 GiB); split the batch or raise max_bytes"
    )]
    BatchTooLarge {
        dir: PathBuf,
        size: u64,
        max_bytes: u64,
    },
    #[error("spool options for {dir} are invalid: {reason}")]
    InvalidOptions { dir: PathBuf, reason: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file. Entries `first_seq..next.first_seq` live in it.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Physical file length.
    bytes: u64,
    /// Readable end; below `bytes` once a corrupt entry cut the segment.
    end: u64,
    /// Batches past `end` already counted as corrupt.
    skipped: u64,
}

/// A place in the log: the entry `seq` starts at `offset` in segment `seg`
/// (named by its first seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    seg: u64,
    offset: u64,
    seq: u64,
}

impl Pos {
    fn start_of(seg: &Segment) -> Pos {
        Pos {
            seg: seg.first_seq,
            offset: 0,
            seq: seg.first_seq,
        }
    }
}

/// What is at a position.
enum Slot<T> {
    Entry(T),
    /// End of the active segment: nothing more to read.
    End,
    /// A bad entry in a segment.
    Corrupt,
}

/// The bounded on-disk queue. See the module docs.
pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    segment_bytes: u64,
    /// Oldest first; the last one is the active (written) segment. Never
    /// empty. The head is always in the first one.
    segments: VecDeque<Segment>,
    writer: File,
    reader: Option<(u64, File)>,
    cursor: CursorFile,
    /// First un-acked entry.
    head: Pos,
    /// Where the last peek stopped, so the next peek/ack need not rescan.
    hint: Option<Pos>,
    next_seq: u64,
    /// Sum of `skipped` over `segments`.
    live_skipped: u64,
    unsynced: u32,
    stats: SpoolStats,
    buf: Vec<u8>,
}

// === impl Spool: public API ===

impl Spool {
    /// Opens (or creates) the spool in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, SpoolOptions::new(max_bytes))
    }

    /// Opens (or creates) the spool in `dir`, recovering from a crash: a
    /// torn or corrupt tail is truncated, acked segments are removed.
    pub fn open_with(dir: impl AsRef<Path>, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        if opts.max_bytes < MIN_MAX_BYTES {
            return Err(SpoolError::InvalidOptions {
                dir,
                reason: "max_bytes is below MIN_MAX_BYTES (16 KiB)",
            });
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cursor_path = dir.join(CURSOR_FILE);
        let (cursor, stored, created) =
            CursorFile::open(&cursor_path).map_err(io_err(&cursor_path))?;
        if created {
            sync_dir(&dir)?;
        }
        let mut segments = list_segments(&dir)?;
        let acked = stored
            .or(segments.front().map(|s| s.first_seq))
            .unwrap_or(0);
        remove_acked_segments(&mut segments, acked)?;

        let mut truncated = 0;
        let mut next_seq = acked;
        if let Some(last) = segments.back_mut() {
            let (count, cut) = recover_tail(last)?;
            truncated = cut;
            next_seq = last.first_seq + count;
        }
        if acked >= next_seq {
            // Everything on disk is acked (or the cursor outran a log that
            // lost its unsynced tail): start afresh at the cursor.
            for seg in segments.drain(..) {
                remove_segment_file(&seg.path)?;
            }
            next_seq = acked;
        }
        if segments.is_empty() {
            segments.push_back(create_segment(&dir, next_seq)?);
        }
        let active = segments.back().expect("one segment");
        let writer = open_append(&active.path)?;
        let head = Pos::start_of(segments.front().expect("one segment"));

        let mut spool = Spool {
            segment_bytes: opts.effective_segment_bytes(),
            dir,
            opts,
            segments,
            writer,
            reader: None,
            cursor,
            head,
            hint: None,
            next_seq,
            live_skipped: 0,
            unsynced: 0,
            stats: SpoolStats {
                truncated_tail_bytes: truncated,
                ..SpoolStats::default()
            },
            buf: Vec::new(),
        };
        if truncated > 0 {
            tracing::warn!(dir = %spool.dir.display(), bytes = truncated, "Spool tail was torn or corrupt; truncated it.");
        }
        let head = spool.advance(head, acked)?;
        spool.set_head(head, stored != Some(head.seq))?;
        Ok(spool)
    }

    /// Appends `batch`; when the spool is full, first drops the oldest
    /// segments (acked or not) and reports what un-acked data that cost.
    pub fn push(&mut self, batch: &SpoolBatch) -> Result<PushOutcome, SpoolError> {
        let size = entry::encoded_len(batch);
        if size > self.opts.max_bytes || size - HEADER_LEN > u64::from(u32::MAX) {
            return Err(SpoolError::BatchTooLarge {
                dir: self.dir.clone(),
                size,
                max_bytes: self.opts.max_bytes,
            });
        }
        let (dropped_batches, dropped_bytes) = self.make_room(size)?;
        if self.active().bytes >= self.segment_bytes {
            self.roll()?;
        }
        let seq = self.next_seq;
        entry::encode(seq, batch, &mut self.buf);
        self.append_buf()?;
        self.next_seq += 1;
        self.note_write(false)?;
        Ok(PushOutcome {
            seq: SeqNo(seq),
            dropped_batches,
            dropped_bytes,
        })
    }

    /// The oldest `n` un-acked batches, oldest first. Does not consume them.
    pub fn peek(&mut self, n: usize) -> Result<Vec<(SeqNo, SpoolBatch)>, SpoolError> {
        self.peek_after(None, n)
    }

    /// Up to `n` un-acked batches with seq greater than `after` (all un-acked
    /// ones when `None`), oldest first: lets a sender keep several batches in
    /// flight. Consecutive calls continuing where the last stopped are O(n).
    pub fn peek_after(
        &mut self,
        after: Option<SeqNo>,
        n: usize,
    ) -> Result<Vec<(SeqNo, SpoolBatch)>, SpoolError> {
        let from = after
            .map_or(0, |s| s.0.saturating_add(1))
            .max(self.head.seq);
        let start = self.start_near(from);
        let mut pos = self.advance(start, from)?;
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            pos = self.normalize(pos);
            match self.read_entry(pos)? {
                Slot::Entry((batch, len)) => {
                    out.push((SeqNo(pos.seq), batch));
                    pos.offset += len;
                    pos.seq += 1;
                }
                Slot::End => break,
                Slot::Corrupt => pos = self.skip_corrupt(pos)?,
            }
        }
        self.hint = Some(pos);
        let head = self.head;
        self.set_head(head, false)?;
        Ok(out)
    }

    /// Marks every batch with seq <= `up_to` as delivered: they will never be
    /// returned again, also after a crash (as durable as the sync policy).
    pub fn ack(&mut self, up_to: SeqNo) -> Result<(), SpoolError> {
        let target = up_to.0.saturating_add(1).min(self.next_seq);
        if target <= self.head.seq {
            return Ok(());
        }
        let start = self.start_near(target);
        let head = self.advance(start, target)?;
        self.set_head(head, true)
    }

    /// Encoded bytes of the un-acked batches.
    pub fn len_bytes(&self) -> u64 {
        let ends: u64 = self.segments.iter().map(|s| s.end).sum();
        ends - self.head.offset
    }

    /// Number of un-acked batches.
    pub fn len_batches(&self) -> u64 {
        self.next_seq - self.head.seq - self.live_skipped
    }

    pub fn is_empty(&self) -> bool {
        self.len_batches() == 0
    }

    /// Bytes of segment files on disk (acked-but-not-yet-removed included);
    /// never above `max_bytes`.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Seq the next `push` will get.
    pub fn next_seq(&self) -> SeqNo {
        SeqNo(self.next_seq)
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs everything written so far (for [`SyncPolicy::EveryN`] at a
    /// clean shutdown; a no-op in effect under `Always`).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let active = self.active().path.clone();
        self.writer.sync_data().map_err(io_err(&active))?;
        let cursor = self.dir.join(CURSOR_FILE);
        self.cursor.sync().map_err(io_err(&cursor))?;
        self.unsynced = 0;
        Ok(())
    }
}

// === impl Spool: log mechanics ===

impl Spool {
    fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("a spool always has an active segment")
    }

    fn seg_index(&self, first_seq: u64) -> usize {
        self.segments
            .binary_search_by_key(&first_seq, |s| s.first_seq)
            .expect("positions only name live segments")
    }

    /// The cheapest known position at or before `seq`.
    fn start_near(&self, seq: u64) -> Pos {
        match self.hint {
            // A hint behind the head's segment may name a removed file.
            Some(h) if h.seg >= self.head.seg && h.seq >= self.head.seq && h.seq <= seq => h,
            _ => self.head,
        }
    }

    /// Writes `self.buf` at the end of the active segment. On failure the
    /// segment is cut back so no partial entry stays behind.
    fn append_buf(&mut self) -> Result<(), SpoolError> {
        let len = self.buf.len() as u64;
        if let Err(e) = self.writer.write_all(&self.buf) {
            let active = self.active();
            let _ = self.writer.set_len(active.bytes);
            return Err(io_err(&active.path)(e));
        }
        let active = self.segments.back_mut().expect("active segment");
        active.bytes += len;
        active.end = active.bytes;
        Ok(())
    }

    /// Counts one write against the sync policy. Under `Always` a segment
    /// write is synced here; a cursor write (`cursor_written`) was already
    /// synced by `CursorFile::store`.
    fn note_write(&mut self, cursor_written: bool) -> Result<(), SpoolError> {
        match self.opts.sync {
            SyncPolicy::Always if !cursor_written => {
                let active = self.active().path.clone();
                self.writer.sync_data().map_err(io_err(&active))
            }
            SyncPolicy::Always => Ok(()),
            SyncPolicy::EveryN(n) => {
                self.unsynced += 1;
                if self.unsynced >= n.max(1) {
                    self.sync()?;
                }
                Ok(())
            }
        }
    }

    /// Drops the oldest segments until `size` more bytes fit.
    fn make_room(&mut self, size: u64) -> Result<(u64, u64), SpoolError> {
        let (mut batches, mut bytes) = (0, 0);
        while self.disk_bytes() + size > self.opts.max_bytes {
            if self.segments.len() == 1 {
                if self.active().bytes == 0 {
                    break; // size <= max_bytes, so it fits now
                }
                self.roll()?;
            }
            let (b, by) = self.drop_oldest()?;
            batches += b;
            bytes += by;
        }
        Ok((batches, bytes))
    }

    /// Removes the oldest (sealed) segment, moving the head past it.
    fn drop_oldest(&mut self) -> Result<(u64, u64), SpoolError> {
        let oldest = &self.segments[0];
        let next = Pos::start_of(&self.segments[1]);
        let batches = next.seq - self.head.seq - oldest.skipped;
        let bytes = oldest.end - self.head.offset;
        self.stats.dropped_batches += batches;
        self.stats.dropped_bytes += bytes;
        self.set_head(next, true)?;
        Ok((batches, bytes))
    }

    /// Seals the active segment and starts a new one at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.active().bytes == 0 {
            return Ok(());
        }
        let active = self.active().path.clone();
        self.writer.sync_data().map_err(io_err(&active))?;
        let seg = create_segment(&self.dir, self.next_seq)?;
        self.writer = open_append(&seg.path)?;
        self.segments.push_back(seg);
        Ok(())
    }

    /// Moves `pos` off the end of a sealed segment to the next one.
    fn normalize(&mut self, mut pos: Pos) -> Pos {
        let mut i = self.seg_index(pos.seg);
        while i + 1 < self.segments.len() && pos.offset >= self.segments[i].end {
            let next = Pos::start_of(&self.segments[i + 1]);
            let seg = &mut self.segments[i];
            if pos.seq < next.seq && seg.skipped == 0 {
                // A sealed segment shorter than its name range says: the
                // missing entries were lost (only possible if the disk lost
                // synced data). Count them once.
                seg.skipped = next.seq - pos.seq;
                self.live_skipped += seg.skipped;
                self.stats.corrupt_batches += seg.skipped;
            }
            pos = next;
            i += 1;
        }
        pos
    }

    /// Moves `pos` forward to seq `target` (or the end of the log), reading
    /// only entry headers.
    fn advance(&mut self, mut pos: Pos, target: u64) -> Result<Pos, SpoolError> {
        loop {
            pos = self.normalize(pos);
            if pos.seq >= target {
                return Ok(pos);
            }
            match self.read_len(pos)? {
                Slot::Entry(len) => {
                    pos.offset += len;
                    pos.seq += 1;
                }
                Slot::End => return Ok(pos),
                Slot::Corrupt => pos = self.skip_corrupt(pos)?,
            }
        }
    }

    /// Ends the segment holding `pos` at `pos` and counts the rest of its
    /// batches as corrupt. The active segment is sealed first so that new
    /// pushes go to a clean file.
    fn skip_corrupt(&mut self, pos: Pos) -> Result<Pos, SpoolError> {
        if self.seg_index(pos.seg) + 1 == self.segments.len() {
            self.roll()?;
        }
        let i = self.seg_index(pos.seg);
        let next = Pos::start_of(&self.segments[i + 1]);
        let skipped = next.seq - pos.seq;
        let seg = &mut self.segments[i];
        seg.end = pos.offset;
        seg.skipped += skipped;
        self.live_skipped += skipped;
        self.stats.corrupt_batches += skipped;
        self.hint = None;
        tracing::error!(
            segment = %seg.path.display(),
            offset = pos.offset,
            seq = pos.seq,
            batches = skipped,
            "Spool entry failed its checksum; skipping the rest of the segment."
        );
        Ok(next)
    }

    /// Makes `pos` the head, persisting the cursor when `persist` is set (or
    /// the head left its segment), then removes segments behind it.
    fn set_head(&mut self, pos: Pos, persist: bool) -> Result<(), SpoolError> {
        let pos = self.normalize(pos);
        let left_segment = pos.seg != self.segments[0].first_seq;
        self.head = pos;
        if persist || left_segment {
            let sync = self.opts.sync == SyncPolicy::Always;
            let path = self.dir.join(CURSOR_FILE);
            self.cursor.store(pos.seq, sync).map_err(io_err(&path))?;
            self.note_write(true)?;
        }
        while self.segments[0].first_seq < pos.seg {
            let seg = self.segments.pop_front().expect("head segment remains");
            self.live_skipped -= seg.skipped;
            if self
                .reader
                .as_ref()
                .is_some_and(|(s, _)| *s == seg.first_seq)
            {
                self.reader = None;
            }
            remove_segment_file(&seg.path)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` of segment `seg`.
    fn read_exact_at(&mut self, seg: u64, offset: u64, buf: &mut [u8]) -> Result<(), SpoolError> {
        let path = &self.segments[self.seg_index(seg)].path;
        if self.reader.as_ref().is_none_or(|(s, _)| *s != seg) {
            let file = File::open(path).map_err(io_err(path))?;
            self.reader = Some((seg, file));
        }
        let (_, file) = self.reader.as_mut().expect("just opened");
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(buf))
            .map_err(io_err(path))
    }

    /// The entry length (header included) at `pos`, checking only its
    /// framing and seq, not its checksum.
    fn read_len(&mut self, pos: Pos) -> Result<Slot<u64>, SpoolError> {
        let end = self.segments[self.seg_index(pos.seg)].end;
        if pos.offset >= end {
            return Ok(Slot::End);
        }
        if pos.offset + PEEK_LEN as u64 > end {
            return Ok(Slot::Corrupt);
        }
        let mut head = [0u8; PEEK_LEN];
        self.read_exact_at(pos.seg, pos.offset, &mut head)?;
        let (body_len, _) = entry::parse_header(&head);
        let len = HEADER_LEN + u64::from(body_len);
        let plausible = u64::from(body_len) >= entry::BODY_FIXED_LEN && pos.offset + len <= end;
        if !plausible || entry::body_seq(&head[HEADER_LEN as usize..]) != pos.seq {
            return Ok(Slot::Corrupt);
        }
        Ok(Slot::Entry(len))
    }

    /// The checked, decoded entry at `pos` and its length.
    fn read_entry(&mut self, pos: Pos) -> Result<Slot<(SpoolBatch, u64)>, SpoolError> {
        let len = match self.read_len(pos)? {
            Slot::Entry(len) => len,
            Slot::End => return Ok(Slot::End),
            Slot::Corrupt => return Ok(Slot::Corrupt),
        };
        let mut raw = vec![0u8; len as usize];
        self.read_exact_at(pos.seg, pos.offset, &mut raw)?;
        let mut raw = Bytes::from(raw);
        let body = raw.split_off(HEADER_LEN as usize);
        Ok(match entry::decode(&raw, body, pos.seq) {
            Some(batch) => Slot::Entry((batch, len)),
            None => Slot::Corrupt,
        })
    }
}

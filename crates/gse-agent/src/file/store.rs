//! What this agent can serve: the pieces of every task it is a source,
//! target or relay of, shared by the P2P listener and direct requests.
//!
//! [`PieceStore`] maps (transfer_id, task_index) to a [`TaskShare`]: the
//! task's token (checked in PeerHello), its manifest, and per entry where
//! its bytes are ([`Source`]): the source's own file, read and *verified*
//! per piece so that a file changed since hashing is never served as good
//! data; or a target's open file (the temp file while downloading, the
//! installed file after), holding only verified pieces. A source's files
//! are opened with its task's account ([`TaskShare::read_as`]), never with
//! more rights than the manifest was built with. Pieces a target
//! gains are logged in order so every peer connection can push `Have`s
//! ([`TaskShare::gained_since`]). Reading is blocking (callers use
//! `spawn_blocking`); who may ask, slots and speed live in `peer/`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gse_proto::link::{EntryHave, PieceStatus};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::DIRECT_TRANSFER_LIMIT_BYTES;
use super::account::SourceAccount;
use super::digest::FileDigest;
use super::manifest::{EntryKind, ManifestEntry};
use super::piece_set::PieceSet;
use super::rate::RateLimit;

/// How long after sending a piece the source answers "busy" to other
/// requests for it: about the time its receiver takes to announce it.
pub const SEED_REPEAT_GRACE: Duration = Duration::from_secs(2);

/// The source's record of its uploads to peers.
#[derive(Debug, Default)]
struct SeedUploads {
    /// Per (entry, piece): being sent (`None`) or when last sent.
    recent: HashMap<(u32, u32), Option<Instant>>,
    /// Pieces sent at least once, of `to_send` (those announced to peers).
    sent_once: HashSet<(u32, u32)>,
    to_send: usize,
}

/// A task's address: (transfer_id, task_index).
pub type TaskKey = (String, u32);

/// Every task this agent serves pieces of.
#[derive(Debug)]
pub struct PieceStore {
    tasks: RwLock<HashMap<TaskKey, Arc<TaskShare>>>,
    /// Bumped whenever a task is added (for hellos that came early).
    added: watch::Sender<u64>,
}

impl Default for PieceStore {
    fn default() -> Self {
        PieceStore {
            tasks: RwLock::default(),
            added: watch::channel(0).0,
        }
    }
}

/// Why a piece cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("piece {piece} of entry {entry} is not here yet")]
    Missing { entry: u32, piece: u32 },
    #[error("{0}")]
    Failed(String),
}

/// Where one entry's bytes are.
#[derive(Debug)]
pub enum Source {
    /// Nothing to serve (yet), or not a file.
    None,
    /// A file on disk with every piece, verified against the manifest as
    /// it is read (the transfer's source, a relay's small cached files).
    Seed(PathBuf),
    /// An open file holding the pieces in `have`, each verified when it
    /// was written (a target's temp file, then its installed file).
    Local { file: Arc<File>, have: PieceSet },
}

/// One task's servable state.
#[derive(Debug)]
pub struct TaskShare {
    pub transfer_id: String,
    pub task_index: u32,
    token: Vec<u8>,
    manifest: Arc<Vec<ManifestEntry>>,
    sources: Vec<Mutex<Source>>,
    /// The task's own upload cap (from its request).
    pub upload: Option<Arc<RateLimit>>,
    served: AtomicU64,
    /// Set on the transfer's source: see [`TaskShare::claim_seed_upload`].
    seed_uploads: Option<Mutex<SeedUploads>>,
    /// Whose rights `Source::Seed` files are opened with.
    account: SourceAccount,
    /// Pieces gained, in order, for `Have`s; the watch holds its length.
    gained: Mutex<Vec<(u32, u32)>>,
    gained_len: watch::Sender<usize>,
    /// Cancelled when the task leaves the store: its peer connections end.
    pub closed: CancellationToken,
}

// === impl PieceStore ===

impl PieceStore {
    /// Adds `share`, closing any older share of the same task.
    pub fn insert(&self, share: Arc<TaskShare>) {
        if let Some(old) = self.tasks.write().insert(share.key(), share) {
            old.closed.cancel();
        }
        self.added.send_modify(|n| *n += 1);
    }

    /// Wakes when a task is added.
    pub fn watch_added(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    /// Adds `share` unless the task is there already (a source that is its
    /// own target keeps serving as the source); returns whether it was added.
    pub fn insert_if_absent(&self, share: Arc<TaskShare>) -> bool {
        let mut tasks = self.tasks.write();
        if tasks.contains_key(&share.key()) {
            return false;
        }
        tasks.insert(share.key(), share);
        drop(tasks);
        self.added.send_modify(|n| *n += 1);
        true
    }

    pub fn get(&self, transfer_id: &str, task_index: u32) -> Option<Arc<TaskShare>> {
        self.tasks
            .read()
            .get(&(transfer_id.to_owned(), task_index))
            .cloned()
    }

    /// Removes `share` (only that share, not a newer one of the same task)
    /// and ends its connections.
    pub fn remove(&self, share: &Arc<TaskShare>) {
        let mut tasks = self.tasks.write();
        if tasks
            .get(&share.key())
            .is_some_and(|s| Arc::ptr_eq(s, share))
        {
            tasks.remove(&share.key());
        }
        share.closed.cancel();
    }

    /// Removes every task (the link to the node ended).
    pub fn clear(&self) {
        for (_, share) in self.tasks.write().drain() {
            share.closed.cancel();
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl TaskShare ===

impl TaskShare {
    /// A share with nothing to serve yet; fill it with [`TaskShare::set_source`].
    pub fn new(
        transfer_id: String,
        task_index: u32,
        token: Vec<u8>,
        manifest: Arc<Vec<ManifestEntry>>,
        upload: Option<Arc<RateLimit>>,
    ) -> Self {
        TaskShare {
            transfer_id,
            task_index,
            token,
            sources: manifest.iter().map(|_| Mutex::new(Source::None)).collect(),
            manifest,
            upload,
            served: AtomicU64::new(0),
            seed_uploads: None,
            account: SourceAccount::agent(),
            gained: Mutex::new(Vec::new()),
            gained_len: watch::channel(0).0,
            closed: CancellationToken::new(),
        }
    }

    /// Marks this share as the transfer's source (its uploads are the
    /// scarce ones; see [`TaskShare::claim_seed_upload`]).
    pub fn into_seed(mut self) -> Self {
        let to_send = self
            .manifest
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File(d) if d.size > DIRECT_TRANSFER_LIMIT_BYTES => {
                    Some(d.piece_count() as usize)
                }
                _ => None,
            })
            .sum();
        self.seed_uploads = Some(Mutex::new(SeedUploads {
            to_send,
            ..SeedUploads::default()
        }));
        self
    }

    /// Opens `Source::Seed` files with `account`'s rights (the transfer's
    /// source account) instead of the agent's.
    pub fn read_as(mut self, account: SourceAccount) -> Self {
        self.account = account;
        self
    }

    /// On the source: whether to upload piece `piece` of `entry` to a peer
    /// now. Not while the same piece is going to another peer, nor within
    /// [`SEED_REPEAT_GRACE`] of having sent it (its receiver's `Have` is
    /// on its way): the peer is told "busy" and asks for another piece, so
    /// the source sends each piece about once and the peers spread it.
    /// Once every piece went out at least once, repeats are served freely
    /// (peers that do not pass pieces on, e.g. without a P2P listener,
    /// need them all from the source). Call
    /// [`TaskShare::seed_upload_done`] after. Always true elsewhere.
    pub fn claim_seed_upload(&self, entry: u32, piece: u32) -> bool {
        let Some(uploads) = &self.seed_uploads else {
            return true;
        };
        let now = Instant::now();
        let mut uploads = uploads.lock();
        if uploads.sent_once.len() >= uploads.to_send {
            return true;
        }
        if uploads.recent.len() > 4096 {
            uploads
                .recent
                .retain(|_, done| done.is_none_or(|t| now - t < SEED_REPEAT_GRACE));
        }
        match uploads.recent.get(&(entry, piece)) {
            Some(None) => false,
            Some(Some(t)) if now - *t < SEED_REPEAT_GRACE => false,
            _ => {
                uploads.recent.insert((entry, piece), None);
                true
            }
        }
    }

    /// Ends a claim: `sent` says whether the piece went out.
    pub fn seed_upload_done(&self, entry: u32, piece: u32, sent: bool) {
        if let Some(uploads) = &self.seed_uploads {
            let mut uploads = uploads.lock();
            if sent {
                uploads.recent.insert((entry, piece), Some(Instant::now()));
                uploads.sent_once.insert((entry, piece));
            } else {
                uploads.recent.remove(&(entry, piece));
            }
        }
    }

    pub fn key(&self) -> TaskKey {
        (self.transfer_id.clone(), self.task_index)
    }

    pub fn manifest(&self) -> &Arc<Vec<ManifestEntry>> {
        &self.manifest
    }

    /// Whether `token` is this transfer's secret.
    pub fn token_matches(&self, token: &[u8]) -> bool {
        // Compare every byte whatever the first difference, so the time
        // taken does not tell a guesser how much it got right.
        token.len() == self.token.len()
            && token
                .iter()
                .zip(&self.token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub fn set_source(&self, entry: usize, source: Source) {
        if let Some(slot) = self.sources.get(entry) {
            *slot.lock() = source;
        }
    }

    /// Records that piece `piece` of `entry` (a `Local` source) is now
    /// here and verified, and tells the peer connections.
    pub fn gained(&self, entry: u32, piece: u32) {
        let Some(slot) = self.sources.get(entry as usize) else {
            return;
        };
        // Log before source, as in `have_snapshot`: a snapshot and the log
        // after its position never both miss a piece.
        let mut log = self.gained.lock();
        let mut source = slot.lock();
        if let Source::Local { have, .. } = &mut *source
            && piece < have.len()
            && have.insert(piece)
        {
            log.push((entry, piece));
            self.gained_len.send_replace(log.len());
        }
    }

    /// Pieces gained since position `from` of the log, and the new position.
    pub fn gained_since(&self, from: usize) -> (Vec<(u32, u32)>, usize) {
        let log = self.gained.lock();
        (log.get(from..).unwrap_or_default().to_vec(), log.len())
    }

    /// Wakes when pieces are gained.
    pub fn watch_gained(&self) -> watch::Receiver<usize> {
        self.gained_len.subscribe()
    }

    /// What we have, for a PeerHelloAck, and the gained-log position it
    /// reflects. Sources list files above the direct limit (smaller ones
    /// travel direct); targets list the files they hold pieces of.
    pub fn have_snapshot(&self) -> (Vec<EntryHave>, usize) {
        let log = self.gained.lock();
        let mut out = Vec::new();
        for (index, (entry, source)) in self.manifest.iter().zip(&self.sources).enumerate() {
            let EntryKind::File(digest) = &entry.kind else {
                continue;
            };
            let bitmap = match &*source.lock() {
                Source::Seed(_) if digest.size > DIRECT_TRANSFER_LIMIT_BYTES => {
                    PieceSet::full(digest.piece_count()).to_bytes()
                }
                Source::Local { have, .. } if have.count() > 0 => have.to_bytes(),
                _ => continue,
            };
            out.push(EntryHave {
                entry_index: index as u32,
                bitmap,
            });
        }
        (out, log.len())
    }

    /// The file digest of `entry`, if it is a file.
    pub fn digest(&self, entry: u32) -> Option<&FileDigest> {
        match &self.manifest.get(entry as usize)?.kind {
            EntryKind::File(d) => Some(d),
            _ => None,
        }
    }

    /// Quick check before taking an upload slot: the piece's length, or
    /// the status to answer instead.
    pub fn check(&self, entry: u32, piece: u32) -> Result<usize, PieceStatus> {
        let (_, len) = self
            .digest(entry)
            .and_then(|d| d.piece_range(piece))
            .ok_or(PieceStatus::PieceError)?;
        match &*self.sources[entry as usize].lock() {
            Source::Seed(_) => Ok(len),
            Source::Local { have, .. } if have.contains(piece) => Ok(len),
            _ => Err(PieceStatus::PieceMissing),
        }
    }

    /// Reads piece `piece` of `entry` into `buf` (which should have the
    /// capacity). Blocking.
    pub fn read_piece(
        &self,
        entry: u32,
        piece: u32,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, ServeError> {
        let digest = self.digest(entry).ok_or_else(|| {
            ServeError::Failed(format!("entry {entry} is not a file of this task"))
        })?;
        let (offset, len) = digest.piece_range(piece).ok_or_else(|| {
            ServeError::Failed(format!(
                "entry {entry} has {} pieces, not {piece}",
                digest.piece_count()
            ))
        })?;
        let missing = ServeError::Missing { entry, piece };
        let (file, path) = match &*self.sources[entry as usize].lock() {
            Source::Seed(path) => (None, Some(path.clone())),
            Source::Local { file, have } if have.contains(piece) => (Some(file.clone()), None),
            _ => return Err(missing),
        };
        buf.clear();
        buf.resize(len, 0);
        match (file, path) {
            (Some(file), _) => read_exact_at(&file, &mut buf, offset).map_err(|e| {
                ServeError::Failed(format!(
                    "cannot read piece {piece} of {:?}: {e}",
                    self.manifest[entry as usize].path
                ))
            })?,
            (None, Some(path)) => {
                read_seed(&self.account, &path, &mut buf, offset)?;
                if !digest.piece_matches(piece, &buf) {
                    return Err(ServeError::Failed(format!(
                        "source file {path:?} changed since it was hashed (piece {piece} differs); \
                         send it again once nothing is writing it"
                    )));
                }
            }
            (None, None) => return Err(missing),
        }
        self.served.fetch_add(len as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Piece bytes served so far (to peers and direct).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

fn read_seed(
    account: &SourceAccount,
    path: &std::path::Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), ServeError> {
    let file = account.open(path).map_err(|e| {
        ServeError::Failed(format!(
            "cannot open source file {path:?}: {e}; it was moved or made unreadable since it was hashed"
        ))
    })?;
    read_exact_at(&file, buf, offset).map_err(|e| {
        ServeError::Failed(format!(
            "cannot read source file {path:?} at {offset}: {e}; it shrank or became unreadable since it was hashed"
        ))
    })
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::file::digest::digest_reader;

    fn share_for(path: &std::path::Path, data: &[u8]) -> TaskShare {
        let digest = digest_reader(data, data.len() as u64, 1024).unwrap();
        let manifest = vec![ManifestEntry {
            path: "f".into(),
            mode: 0o644,
            kind: EntryKind::File(digest),
        }];
        let share = TaskShare::new("t".into(), 0, b"secret".to_vec(), Arc::new(manifest), None);
        share.set_source(0, Source::Seed(path.into()));
        share
    }

    #[test]
    fn a_seed_serves_verified_pieces_and_refuses_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let share = share_for(&path, &data);
        assert!(share.token_matches(b"secret") && !share.token_matches(b"secreT"));
        assert_eq!(
            share.read_piece(0, 1, Vec::new()).unwrap(),
            &data[1024..2048]
        );
        assert_eq!(share.served(), 1024);
        assert_eq!(share.check(0, 19), Ok(544));
        assert_eq!(share.check(0, 20), Err(PieceStatus::PieceError));
        let mut changed = data.clone();
        changed[1500] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let err = share.read_piece(0, 1, Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("changed since it was hashed"),
            "{err}"
        );
        assert_eq!(share.read_piece(0, 0, Vec::new()).unwrap(), &data[..1024]);
    }

    #[test]
    fn a_seed_sends_each_piece_once_before_any_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = vec![1u8; 20_000];
        std::fs::write(&path, &data).unwrap();
        let share = share_for(&path, &data).into_seed();
        assert!(share.claim_seed_upload(0, 3));
        assert!(!share.claim_seed_upload(0, 3), "in flight to another peer");
        share.seed_upload_done(0, 3, false);
        assert!(share.claim_seed_upload(0, 3), "not sent after all");
        share.seed_upload_done(0, 3, true);
        assert!(
            !share.claim_seed_upload(0, 3),
            "just sent: its receiver shares it"
        );
        for piece in (0..20).filter(|&p| p != 3) {
            assert!(share.claim_seed_upload(0, piece));
            share.seed_upload_done(0, piece, true);
        }
        assert!(share.claim_seed_upload(0, 3), "every piece went out once");
        assert!(share_for(&path, &data).claim_seed_upload(0, 3));
    }

    #[test]
    fn local_pieces_are_served_once_gained_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = vec![3u8; 4096];
        std::fs::write(&path, &data).unwrap();
        let share = share_for(&path, &data);
        let file = Arc::new(File::open(&path).unwrap());
        share.set_source(
            0,
            Source::Local {
                file,
                have: PieceSet::new(4),
            },
        );
        assert_eq!(share.check(0, 2), Err(PieceStatus::PieceMissing));
        assert_eq!(share.have_snapshot().0.len(), 0);
        share.gained(0, 2);
        share.gained(0, 2);
        assert_eq!(share.read_piece(0, 2, Vec::new()).unwrap(), vec![3u8; 1024]);
        assert_eq!(share.gained_since(0), (vec![(0, 2)], 1));
        let (have, pos) = share.have_snapshot();
        assert_eq!((have[0].bitmap.clone(), pos), (vec![0b0100], 1));
    }
}

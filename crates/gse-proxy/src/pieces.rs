//! One copy of a file across the boundary (F8): the pieces the area's
//! targets fetch through the node (`PieceRequest` / `PieceData`, the direct
//! path) are fetched upstream once, kept on this proxy's disk and served
//! to the area's other targets from there. (Among themselves the area's
//! agents also trade pieces P2P: the node gives them peers of their own
//! area only.)
//!
//! The only agent frames a proxy reads: a target's `PieceRequest` going up,
//! the `PieceData` answering it coming down, and the `FileStart` that makes
//! an agent a target of a task (only such an agent is served from the
//! cache; any other request goes to the node, which checks it).
//!
//! [`Pieces`] is per link upstream: the fetches in flight (each asked of
//! the node under an id of this proxy's, on the channel of the first
//! target that asked, and answered to every target waiting for it) and
//! who may be served what. [`PieceStore`] is the process's disk cache:
//! bounded by `file.cache_max_mb` (least recently used pieces go first) and
//! emptied of a transfer once nobody asked for it for `file.cache_idle`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gse_proto::link::{PieceData, PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;

/// A fetch upstream not answered within this long is given up: its
/// waiters are told "busy" and ask again.
pub(crate) const FETCH_WITHIN: Duration = Duration::from_secs(90);
/// Longest transfer id taken as a cache key.
const MAX_TRANSFER_ID: usize = 128;

/// One piece of one task's entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PieceKey {
    transfer_id: String,
    task_index: u32,
    entry_index: u32,
    piece: u32,
}

impl PieceKey {
    fn of_request(r: &PieceRequest) -> Self {
        PieceKey {
            transfer_id: r.transfer_id.clone(),
            task_index: r.task_index,
            entry_index: r.entry_index,
            piece: r.piece,
        }
    }

    /// The cache file's name: a hash, never the (untrusted) id itself.
    fn file_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.transfer_id.as_bytes());
        for n in [self.task_index, self.entry_index, self.piece] {
            h.update(&n.to_le_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    fn data(&self, request_id: u64, status: PieceStatus, data: Bytes) -> Frame {
        let d = PieceData {
            transfer_id: self.transfer_id.clone(),
            task_index: self.task_index,
            entry_index: self.entry_index,
            piece: self.piece,
            request_id,
            status: status as i32,
            data,
            message: String::new(),
        };
        Frame::new(MsgType::PieceData, request_id, &d)
    }
}

/// The pieces kept on disk.
pub(crate) struct PieceStore {
    dir: PathBuf,
    max_bytes: u64,
    idle: Duration,
    state: Mutex<Stored>,
}

#[derive(Default)]
struct Stored {
    /// Pieces just fetched and still being written: served from memory
    /// meanwhile, so that a request in between is no second fetch.
    fresh: HashMap<PieceKey, Bytes>,
    pieces: HashMap<PieceKey, (u64, Instant)>,
    bytes: u64,
    /// When each transfer was last asked for.
    transfers: HashMap<String, Instant>,
}

impl PieceStore {
    /// A store in `dir`, made private (0700; refused when another user
    /// could have planted or could swap it); the pieces an earlier run left
    /// there are removed (they are not trusted), and nothing else in it.
    pub fn open(dir: PathBuf, max_bytes: u64, idle: Duration) -> std::io::Result<Arc<Self>> {
        gse_core::private_files::make_private_dir(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stem = name.strip_suffix(".tmp").unwrap_or(&name);
            let ours = stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit());
            if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Arc::new(PieceStore {
            dir,
            max_bytes,
            idle,
            state: Mutex::new(Stored::default()),
        }))
    }

    fn has(&self, key: &PieceKey) -> bool {
        let mut st = self.state.lock();
        let now = Instant::now();
        st.transfers.insert(key.transfer_id.clone(), now);
        if st.fresh.contains_key(key) {
            return true;
        }
        match st.pieces.get_mut(key) {
            Some((_, used)) => {
                *used = now;
                true
            }
            None => false,
        }
    }

    async fn read(&self, key: &PieceKey) -> Option<Bytes> {
        if let Some(bytes) = self.state.lock().fresh.get(key) {
            return Some(bytes.clone());
        }
        tokio::fs::read(self.dir.join(key.file_name()))
            .await
            .ok()
            .map(Bytes::from)
    }

    /// Serves `data` as `key` from memory until [`Self::put`] has it on
    /// disk.
    fn fresh(&self, key: PieceKey, data: Bytes) {
        self.state.lock().fresh.insert(key, data);
    }

    /// Keeps `data` as `key`, evicting the least recently used pieces
    /// beyond the bound.
    async fn put(&self, key: PieceKey, data: Bytes) {
        self.write(&key, data).await;
        self.state.lock().fresh.remove(&key);
    }

    async fn write(&self, key: &PieceKey, data: Bytes) {
        let key = key.clone();
        let len = data.len() as u64;
        if len > self.max_bytes {
            return;
        }
        let path = self.dir.join(key.file_name());
        let tmp = path.with_extension("tmp");
        let written = async {
            tokio::fs::write(&tmp, &data).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep a piece in the file cache; the area's targets fetch it upstream again");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        let evict = {
            let mut st = self.state.lock();
            st.transfers
                .entry(key.transfer_id.clone())
                .or_insert_with(Instant::now);
            if let Some((old, _)) = st.pieces.insert(key, (len, Instant::now())) {
                st.bytes -= old;
            }
            st.bytes += len;
            let mut evict = Vec::new();
            while st.bytes > self.max_bytes {
                let Some(oldest) = st
                    .pieces
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some((n, _)) = st.pieces.remove(&oldest) {
                    st.bytes -= n;
                }
                evict.push(oldest);
            }
            evict
        };
        self.remove_files(evict).await;
    }

    /// Evicts the transfers nobody asked for within `idle`.
    pub async fn sweep(&self) {
        let evict = {
            let mut st = self.state.lock();
            let idle = self.idle;
            let stale: HashSet<String> = st
                .transfers
                .iter()
                .filter(|(_, at)| at.elapsed() >= idle)
                .map(|(t, _)| t.clone())
                .collect();
            st.transfers.retain(|t, _| !stale.contains(t));
            let gone: Vec<PieceKey> = st
                .pieces
                .keys()
                .filter(|k| stale.contains(&k.transfer_id))
                .cloned()
                .collect();
            for k in &gone {
                if let Some((n, _)) = st.pieces.remove(k) {
                    st.bytes -= n;
                }
            }
            gone
        };
        self.remove_files(evict).await;
    }

    async fn remove_files(&self, keys: Vec<PieceKey>) {
        for k in keys {
            let _ = tokio::fs::remove_file(self.dir.join(k.file_name())).await;
        }
    }
}

/// A fetch upstream in flight.
struct Fetch {
    key: PieceKey,
    since: Instant,
    /// (channel, the target's request id) of every target waiting.
    waiters: Vec<(u64, u64)>,
}

/// The pieces of one link upstream.
pub(crate) struct Pieces {
    store: Arc<PieceStore>,
    state: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    next_id: u64,
    /// By this proxy's request id.
    fetches: HashMap<u64, Fetch>,
    by_key: HashMap<PieceKey, u64>,
    /// (channel, transfer, task) a FileStart made a target of.
    targets: HashSet<(u64, String, u32)>,
}

/// What to do with a target's `PieceRequest`.
pub(crate) enum Asked {
    /// Send this upstream on the channel instead.
    Fetch(Frame),
    /// Answered from the cache, or joined a fetch in flight: nothing to
    /// send upstream.
    Handled,
    /// Not the cache's: pass it on unchanged.
    Pass(Frame),
}

/// `FileStart`'s first fields: all a proxy reads of it.
#[derive(Clone, PartialEq, prost::Message)]
struct FileStartHead {
    #[prost(string, tag = "1")]
    transfer_id: String,
    #[prost(uint32, tag = "2")]
    task_index: u32,
}

impl Pieces {
    pub fn new(store: Arc<PieceStore>) -> Self {
        Pieces {
            store,
            state: Mutex::new(InFlight::default()),
        }
    }

    /// A frame going down to channel `chan`: a `FileStart` makes its agent
    /// a target of that task; `Some` answers of a fetch to deliver (the
    /// frame was this proxy's fetch) and `None` for any other frame, which
    /// goes on unchanged.
    pub fn down(&self, chan: u64, frame: &Frame) -> Option<Vec<(u64, Frame)>> {
        match frame.msg_type {
            MsgType::FileStart => {
                if let Ok(head) = frame.decode::<FileStartHead>()
                    && head.transfer_id.len() <= MAX_TRANSFER_ID
                {
                    let mut st = self.state.lock();
                    st.targets.insert((chan, head.transfer_id, head.task_index));
                }
                None
            }
            MsgType::PieceData => self.answered(frame),
            _ => None,
        }
    }

    /// The node's answer to a fetch of ours: the frames for its waiters.
    fn answered(&self, frame: &Frame) -> Option<Vec<(u64, Frame)>> {
        let data: PieceData = frame.decode().ok()?;
        let fetch = {
            let mut st = self.state.lock();
            let fetch = st.fetches.remove(&data.request_id)?;
            st.by_key.remove(&fetch.key);
            fetch
        };
        let status = PieceStatus::try_from(data.status).unwrap_or(PieceStatus::PieceError);
        if status == PieceStatus::PieceOk {
            metrics::counter!("gse_proxy_file_bytes_from_upstream_total")
                .increment(data.data.len() as u64);
            let (store, key, bytes) = (self.store.clone(), fetch.key.clone(), data.data.clone());
            store.fresh(key.clone(), bytes.clone());
            tokio::spawn(async move { store.put(key, bytes).await });
        }
        let frames = fetch
            .waiters
            .iter()
            .map(|&(chan, request_id)| {
                let mut f = fetch.key.data(request_id, status, data.data.clone());
                if status != PieceStatus::PieceOk {
                    let mut d: PieceData = f.decode().expect("just encoded");
                    d.message = data.message.clone();
                    f = Frame::new(MsgType::PieceData, request_id, &d);
                }
                (chan, f)
            })
            .collect();
        Some(frames)
    }

    /// A target's `PieceRequest` on channel `chan`.
    pub fn up(self: &Arc<Self>, chan: u64, frame: Frame) -> (Asked, Option<ServeLater>) {
        let Ok(req) = frame.decode::<PieceRequest>() else {
            return (Asked::Pass(frame), None);
        };
        if req.transfer_id.len() > MAX_TRANSFER_ID {
            return (Asked::Pass(frame), None);
        }
        let key = PieceKey::of_request(&req);
        let mut st = self.state.lock();
        let target = (chan, key.transfer_id.clone(), key.task_index);
        if !st.targets.contains(&target) {
            // Not known here as a target of the task: the node decides.
            return (Asked::Pass(frame), None);
        }
        if self.store.has(&key) {
            let later = ServeLater {
                pieces: self.clone(),
                key,
                chan,
                request_id: req.request_id,
            };
            return (Asked::Handled, Some(later));
        }
        if let Some(id) = st.by_key.get(&key).copied()
            && let Some(fetch) = st.fetches.get_mut(&id)
        {
            fetch.waiters.push((chan, req.request_id));
            return (Asked::Handled, None);
        }
        st.next_id += 1;
        let id = st.next_id;
        st.by_key.insert(key.clone(), id);
        st.fetches.insert(
            id,
            Fetch {
                key,
                since: Instant::now(),
                waiters: vec![(chan, req.request_id)],
            },
        );
        let ours = PieceRequest {
            request_id: id,
            ..req
        };
        (
            Asked::Fetch(Frame::new(MsgType::PieceRequest, id, &ours)),
            None,
        )
    }

    /// Channel `chan` ended: its agent is no one's target any more.
    pub fn channel_ended(&self, chan: u64) {
        let mut st = self.state.lock();
        st.targets.retain(|(c, _, _)| *c != chan);
        for fetch in st.fetches.values_mut() {
            fetch.waiters.retain(|(c, _)| *c != chan);
        }
    }

    /// Fetches upstream left unanswered too long: "busy" for their
    /// waiters, who ask again.
    pub fn expired(&self) -> Vec<(u64, Frame)> {
        let mut st = self.state.lock();
        let old: Vec<u64> = st
            .fetches
            .iter()
            .filter(|(_, f)| f.since.elapsed() >= FETCH_WITHIN)
            .map(|(id, _)| *id)
            .collect();
        let mut frames = Vec::new();
        for id in old {
            if let Some(f) = st.fetches.remove(&id) {
                st.by_key.remove(&f.key);
                for (chan, request_id) in f.waiters {
                    frames.push((
                        chan,
                        f.key.data(request_id, PieceStatus::PieceBusy, Bytes::new()),
                    ));
                }
            }
        }
        frames
    }

    pub fn store(&self) -> &Arc<PieceStore> {
        &self.store
    }
}

/// A piece to read from the cache and send down, off the caller's path.
pub(crate) struct ServeLater {
    pieces: Arc<Pieces>,
    key: PieceKey,
    chan: u64,
    request_id: u64,
}

impl ServeLater {
    /// The frame for the target: the piece, or "busy" when it was evicted
    /// meanwhile (the target asks again).
    pub async fn frame(self) -> (u64, Frame) {
        let data = self.pieces.store.read(&self.key).await;
        let frame = match data {
            Some(bytes) => {
                metrics::counter!("gse_proxy_file_bytes_from_cache_total")
                    .increment(bytes.len() as u64);
                self.key.data(self.request_id, PieceStatus::PieceOk, bytes)
            }
            None => self
                .key
                .data(self.request_id, PieceStatus::PieceBusy, Bytes::new()),
        };
        (self.chan, frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(chan_request: u64, piece: u32) -> Frame {
        let r = PieceRequest {
            transfer_id: "t1".into(),
            task_index: 0,
            entry_index: 0,
            piece,
            request_id: chan_request,
        };
        Frame::new(MsgType::PieceRequest, chan_request, &r)
    }

    fn start(chan: u64, pieces: &Pieces) {
        let head = FileStartHead {
            transfer_id: "t1".into(),
            task_index: 0,
        };
        assert!(
            pieces
                .down(chan, &Frame::new(MsgType::FileStart, 0, &head))
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_piece_is_fetched_once_for_every_target_and_then_served_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            PieceStore::open(dir.path().join("c"), 1 << 20, Duration::from_secs(60)).unwrap();
        let pieces = Arc::new(Pieces::new(store));
        // Not a target (no FileStart seen): the node decides.
        assert!(matches!(pieces.up(1, request(5, 0)).0, Asked::Pass(_)));
        start(1, &pieces);
        start(2, &pieces);
        let Asked::Fetch(ours) = pieces.up(1, request(5, 0)).0 else {
            panic!("the first asker fetches")
        };
        assert!(matches!(pieces.up(2, request(9, 0)).0, Asked::Handled));
        let ours: PieceRequest = ours.decode().unwrap();
        let answer = PieceKey::of_request(&ours).data(
            ours.request_id,
            PieceStatus::PieceOk,
            Bytes::from_static(b"piece-0"),
        );
        let out = pieces.down(1, &answer).expect("our fetch's answer");
        let got: Vec<(u64, u64, Bytes)> = out
            .iter()
            .map(|(chan, f)| {
                let d: PieceData = f.decode().unwrap();
                (*chan, d.request_id, d.data)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, 5, Bytes::from_static(b"piece-0")),
                (2, 9, Bytes::from_static(b"piece-0"))
            ]
        );
        // Kept on disk: a third target is served from there.
        start(3, &pieces);
        eventually_stored(&pieces).await;
        let (asked, later) = pieces.up(3, request(11, 0));
        assert!(matches!(asked, Asked::Handled));
        let (chan, frame) = later.expect("served from the cache").frame().await;
        let d: PieceData = frame.decode().unwrap();
        assert_eq!((chan, d.request_id, &d.data[..]), (3, 11, &b"piece-0"[..]));
        // Pieces of an earlier run are removed at start, nothing else.
        let dir_c = dir.path().join("c");
        std::fs::write(dir_c.join("operator-notes.txt"), "keep").unwrap();
        drop(pieces);
        let _again = PieceStore::open(dir_c.clone(), 1 << 20, Duration::from_secs(60)).unwrap();
        let left: Vec<String> = std::fs::read_dir(&dir_c)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["operator-notes.txt"]);
        // An idle transfer is evicted.
        let idle = PieceStore::open(dir.path().join("d"), 1 << 20, Duration::ZERO).unwrap();
        let key = PieceKey::of_request(&ours);
        idle.put(key.clone(), Bytes::from_static(b"x")).await;
        idle.sweep().await;
        assert!(!idle.has(&key));
        assert_eq!(idle.state.lock().bytes, 0);
    }

    async fn eventually_stored(pieces: &Pieces) {
        for _ in 0..200 {
            if pieces.store.state.lock().bytes > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the piece was not stored");
    }
}

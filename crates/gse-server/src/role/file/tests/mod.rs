//! Unit tests of the file role over the real embedded store (SQLite in a
//! temp dir) and a fake link that records what would go to agents and
//! answers `peer_info` from a table: the harness and fakes are here;
//! `start` (listing, resolving, pass-through rules), `flow` (manifests,
//! FileStart, progress, zones), `relay` (the direct path) and `lifecycle`
//! (terminate, disconnects, deadline, restart, memory) hold the tests.
//! Real agent processes are exercised by gse-testkit's end-to-end tests.

mod flow;
mod lifecycle;
mod moving;
mod relay;
mod start;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use gse_core::seams::StateStore;
use gse_core::seams::state_store::FileEntryRecord;
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::{
    CancelTransfer, EntryType, FileEntry, FileManifest, FileManifestRequest, FileProgress,
    FileStart, FileState, PeerSet, PieceData, PieceRequest, ProgressSide,
};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;

use super::spec::{
    AgentSpec, FileKind, FileTaskSpec, SourceFrom, SourceSpec, TargetDirSpec, TransferSpec,
};
use super::{FileConfig, FileLink, FileParts, FileService};
use crate::role::jobs::writer::Writer;
use crate::role::jobs::{self, Memory};
use crate::role::link::{AgentFrames, PeerInfo};
use crate::store::EmbeddedStore;

pub(crate) const NODE: &str = "n1";
pub(crate) use crate::role::task::tests::FIRST_CONN;
use crate::role::task::tests::FakeLink;

// === the writer's steps, driven by hand ===

impl FileService {
    pub(crate) async fn flush(&self, force: bool, writer: &mut Writer) -> bool {
        jobs::writer::flush(self, force, writer).await
    }

    pub(crate) fn evict(&self, now: std::time::Instant, max_entries: usize) {
        let memory = Memory {
            max_entries,
            ..super::writer::MEMORY
        };
        self.jobs.evict(now, &memory);
    }
}

// === fake link ===

/// The task tests' fake link (records frames; agents in `connected` are
/// up), plus each agent's zone and P2P address in `peers`.
#[derive(Default)]
pub(crate) struct FakeFileLink {
    pub base: Arc<FakeLink>,
    pub peers: Mutex<HashMap<AgentKey, PeerInfo>>,
}

impl std::ops::Deref for FakeFileLink {
    type Target = FakeLink;
    fn deref(&self) -> &FakeLink {
        &self.base
    }
}

impl FileLink for FakeFileLink {
    fn peer_info(&self, key: AgentKey) -> Option<PeerInfo> {
        if !self.connected.lock().contains(&key) {
            return None;
        }
        Some(self.peers.lock().get(&key).cloned().unwrap_or(PeerInfo {
            zone: String::new(),
            p2p_addr: Some(p2p(key)),
        }))
    }
}

impl FakeFileLink {
    /// Takes the frames of type `t` sent so far, decoded, with their agent.
    async fn take<M>(&self, t: MsgType, decode: impl Fn(&Frame) -> M) -> Vec<(AgentKey, M)> {
        settle().await;
        let mut sent = self.sent.lock();
        let (mine, rest): (Vec<_>, Vec<_>) = sent.drain(..).partition(|(_, f)| f.msg_type == t);
        *sent = rest;
        mine.iter().map(|(k, f)| (*k, decode(f))).collect()
    }

    pub async fn manifest_requests(&self) -> Vec<(AgentKey, FileManifestRequest)> {
        self.take(MsgType::FileManifestRequest, |f| f.decode().unwrap())
            .await
    }

    pub async fn starts(&self) -> Vec<(AgentKey, FileStart)> {
        self.take(MsgType::FileStart, |f| f.decode().unwrap()).await
    }

    pub async fn cancels(&self) -> Vec<(AgentKey, CancelTransfer)> {
        self.take(MsgType::CancelTransfer, |f| f.decode().unwrap())
            .await
    }

    pub async fn piece_requests(&self) -> Vec<(AgentKey, PieceRequest)> {
        self.take(MsgType::PieceRequest, |f| f.decode().unwrap())
            .await
    }

    pub async fn piece_data(&self) -> Vec<(AgentKey, PieceData)> {
        self.take(MsgType::PieceData, |f| f.decode().unwrap()).await
    }

    pub async fn peer_sets(&self) -> Vec<(AgentKey, PeerSet)> {
        self.take(MsgType::PeerSet, |f| f.decode().unwrap()).await
    }

    pub fn set_zone(&self, ip: &str, zone: &str) {
        self.peers.lock().insert(
            key(ip),
            PeerInfo {
                zone: zone.into(),
                p2p_addr: Some(p2p(key(ip))),
            },
        );
    }

    pub fn disconnect(&self, ip: &str) {
        self.connected.lock().remove(&key(ip));
    }
}

fn p2p(key: AgentKey) -> SocketAddr {
    SocketAddr::new(key.ip, 20020)
}

// The same fake agents as the task role's tests.
pub(crate) use crate::role::task::tests::{agent_record, key};

// === harness ===

pub(crate) struct Harness {
    /// Keeps the store's directory until the test ends.
    pub _dir: tempfile::TempDir,
    pub store: Arc<dyn StateStore>,
    pub link: Arc<FakeFileLink>,
    pub svc: Arc<FileService>,
}

/// A node "n1" holding 10.0.0.1 .. 10.0.0.8 (all in the default zone);
/// 10.0.0.9 is offline; 10.0.0.10 is held by node "n2".
pub(crate) async fn harness() -> Harness {
    harness_with(FileConfig::default()).await
}

pub(crate) async fn harness_with(config: FileConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    let link = Arc::new(FakeFileLink::default());
    let mut agents: Vec<(String, &str, bool)> = (1..=8)
        .map(|i| (format!("10.0.0.{i}"), NODE, true))
        .collect();
    agents.push(("10.0.0.9".into(), NODE, false));
    agents.push(("10.0.0.10".into(), "n2", true));
    for (ip, node, alive) in &agents {
        store
            .upsert_agent(agent_record(ip, node, *alive))
            .await
            .unwrap();
        if *alive && *node == NODE {
            link.connected.lock().insert(key(ip));
        } else if *alive {
            link.remote.lock().insert(key(ip), node.to_string());
        }
    }
    let svc = service(&store, &link, config).await;
    Harness {
        _dir: dir,
        store,
        link,
        svc,
    }
}

pub(crate) async fn service(
    store: &Arc<dyn StateStore>,
    link: &Arc<FakeFileLink>,
    config: FileConfig,
) -> Arc<FileService> {
    FileService::start(FileParts {
        node_id: NODE.into(),
        config,
        store: store.clone(),
        link: Some(link.clone() as Arc<dyn FileLink>),
        sender: link.base.sender(),
    })
    .await
    .unwrap()
}

pub(crate) fn agent(name: &str) -> AgentSpec {
    AgentSpec {
        bk_agent_id: name.into(),
        agent: AgentRef::parse(name).unwrap(),
        bk_container_id: String::new(),
        user: String::new(),
    }
}

/// One task: `/data/a.txt` on `source` to `/tmp/dst` on `targets`.
pub(crate) fn spec(source: &str, targets: &[&str]) -> TransferSpec {
    TransferSpec {
        tasks: vec![task(source, targets)],
        ..TransferSpec::default()
    }
}

pub(crate) fn task(source: &str, targets: &[&str]) -> FileTaskSpec {
    FileTaskSpec {
        source: SourceSpec {
            from: SourceFrom::Agent(agent(source)),
            store_dir: "/data".into(),
            file_name: "a.txt".into(),
            kind: FileKind::File,
        },
        target: TargetDirSpec {
            store_dir: "/tmp/dst".into(),
            ..TargetDirSpec::default()
        },
        targets: targets.iter().map(|t| agent(t)).collect(),
    }
}

/// One file of 100 bytes in pieces of 64 (two pieces), and one directory.
pub(crate) fn entries() -> Vec<FileEntry> {
    vec![
        FileEntry {
            path: "a.txt".into(),
            mode: 0o644,
            r#type: EntryType::EntryFile as i32,
            size: 100,
            piece_size: 64,
            piece_hashes: vec![1; 64],
            blake3: vec![2; 32],
            md5_hex: "00".repeat(16),
            link_target: String::new(),
        },
        FileEntry {
            path: "d".into(),
            mode: 0o755,
            r#type: EntryType::EntryDir as i32,
            ..FileEntry::default()
        },
    ]
}

/// Lets the tasks the service spawned run to their end (sends from frame
/// handlers go out through `Sender::post`, located on their own task): on
/// the tests' single-threaded runtime each yield runs every task ready.
pub(crate) async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    /// Starts `spec` as app "bk_job" and returns its id.
    pub async fn start(&self, spec: TransferSpec) -> String {
        self.svc.start_transfer(spec, "bk_job").await.unwrap()
    }

    /// The source at `ip` answers task `task`'s manifest request.
    pub async fn manifest(&self, ip: &str, task_id: &str, task: u32) {
        let m = FileManifest {
            transfer_id: task_id.into(),
            task_index: task,
            entries: entries(),
            ..FileManifest::default()
        };
        self.frame(ip, Frame::new(MsgType::FileManifest, 0, &m))
            .await;
    }

    /// An agent's `FileProgress` for task 0.
    pub async fn progress(
        &self,
        ip: &str,
        task_id: &str,
        side: ProgressSide,
        state: FileState,
        p: FileProgress,
    ) {
        let p = FileProgress {
            transfer_id: task_id.into(),
            side: side as i32,
            state: state as i32,
            ..p
        };
        self.frame(ip, Frame::new(MsgType::FileProgress, 0, &p))
            .await;
    }

    /// A target at `ip` reports task 0 done.
    pub async fn done(&self, ip: &str, task_id: &str) {
        let p = FileProgress {
            done_bytes: 100,
            total_bytes: 100,
            bytes_p2p: 64,
            bytes_direct: 36,
            ..FileProgress::default()
        };
        self.progress(
            ip,
            task_id,
            ProgressSide::SideDownload,
            FileState::FileDone,
            p,
        )
        .await;
    }

    /// Hands the service a frame from `ip`, then lets the sends it started
    /// finish.
    pub async fn frame(&self, ip: &str, frame: Frame) {
        self.svc.on_frame(key(ip), frame);
        settle().await;
    }

    pub async fn results(&self, task_id: &str) -> Vec<FileEntryRecord> {
        settle().await;
        self.svc.results(task_id, None).await.unwrap()
    }

    /// The download entry of `ip` in task 0.
    pub async fn download(&self, task_id: &str, ip: &str) -> FileEntryRecord {
        let name = format!("0:{ip}");
        self.results(task_id)
            .await
            .into_iter()
            .find(|e| e.mode == 1 && e.dest_agent_id == name)
            .unwrap_or_else(|| panic!("no download entry for {ip}"))
    }

    pub async fn upload(&self, task_id: &str) -> FileEntryRecord {
        self.results(task_id).await.remove(0)
    }

    pub async fn flush(&self) {
        assert!(self.svc.flush(true, &mut Writer::default()).await);
    }
}

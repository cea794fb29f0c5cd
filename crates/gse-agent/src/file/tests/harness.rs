//! In-process agents with real P2P listeners (mutual TLS on 127.0.0.1),
//! and a fake node that routes their agent-link frames: direct piece
//! requests go to the source agent and the answers back, manifests and
//! progress come out to the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gse_core::certs::{CertDir, CertKind};
use gse_core::tls::TlsFiles;
use gse_proto::link::{
    CancelTransfer, EntryType, FileEntry, FileManifest, FileManifestRequest, FileProgress,
    FileStart, FileState, Peer, PieceRequest, SelectionKind,
};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, FileConfig};
use crate::file::wire::PieceDataBody;
use crate::file::{FileRunner, FileService, LinkOut};

/// The transfer every test uses.
pub const TRANSFER: &str = "GSETASK:TEST:1";
pub const TOKEN: &[u8] = b"the-transfer-secret";
/// How long a test waits for an outcome before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Certificates made once per test in a temp dir.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub tls: TlsFiles,
}

pub fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let cd = CertDir::new(dir.path());
    cd.init(&[], 30).unwrap();
    Certs {
        tls: cd.tls_files(CertKind::Agent),
        _dir: dir,
    }
}

/// Content that differs in every piece.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (((i as u64 * 2_654_435_761) >> 7) as u8) ^ seed)
        .collect()
}

/// One agent: its file service, a runner for a pretend link session, and
/// a directory of its own.
pub struct TestAgent {
    pub name: String,
    pub service: Arc<FileService>,
    pub runner: Arc<FileRunner>,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl TestAgent {
    pub fn peer(&self, is_source: bool) -> Peer {
        Peer {
            agent: self.name.clone(),
            addr: self
                .service
                .listen_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "127.0.0.1:1".into()),
            is_source,
        }
    }

    pub fn send(&self, msg_type: MsgType, msg: &impl prost::Message) {
        assert!(self.runner.handle(&Frame::new(msg_type, 7, msg)));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Agents and the fake node between them.
pub struct World {
    pub agents: Vec<TestAgent>,
    progress: mpsc::UnboundedReceiver<(usize, FileProgress)>,
    manifests: mpsc::UnboundedReceiver<(usize, FileManifest)>,
    pub node: Arc<Node>,
}

/// The fake node's routing state.
#[derive(Default)]
pub struct Node {
    /// Which agent answers direct requests.
    pub source: AtomicUsize,
    /// Direct requests are dropped while false.
    pub direct: AtomicBool,
    pub direct_requests: AtomicUsize,
    pending: Mutex<HashMap<u64, (usize, u64)>>,
    next_id: AtomicUsize,
    runners: Mutex<Vec<Arc<FileRunner>>>,
}

impl World {
    /// `n` agents; `tweak(i, cfg)` adjusts agent `i`'s `[file]` section.
    pub async fn start(certs: &Certs, n: usize, tweak: impl Fn(usize, &mut FileConfig)) -> World {
        let node = Arc::new(Node {
            direct: AtomicBool::new(true),
            ..Node::default()
        });
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let (manifest_tx, manifests) = mpsc::unbounded_channel();
        let mut agents = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = AgentConfig::new(
                dir.path().join("data"),
                vec!["127.0.0.1:1".into()],
                certs.tls.clone(),
            );
            cfg.file.p2p_listen = Some("127.0.0.1:0".parse().unwrap());
            tweak(i, &mut cfg.file);
            let shutdown = CancellationToken::new();
            let service = FileService::start(&cfg, shutdown.clone()).await.unwrap();
            let (tx, rx) = mpsc::channel(64);
            let name = format!("0:10.0.0.{}", i + 1);
            let runner = Arc::new(service.runner(tx, name.clone()));
            node.runners.lock().push(runner.clone());
            tokio::spawn(route(
                node.clone(),
                i,
                rx,
                progress_tx.clone(),
                manifest_tx.clone(),
            ));
            agents.push(TestAgent {
                name,
                service,
                runner,
                dir,
                shutdown,
            });
        }
        World {
            agents,
            progress,
            manifests,
            node,
        }
    }

    /// Asks agent `source` for the manifest of `file` (or of the tree,
    /// with an empty name) under `dir`, and waits for it.
    pub async fn manifest(
        &mut self,
        source: usize,
        dir: &Path,
        file: &str,
        upload_bps: u64,
    ) -> FileManifest {
        let mut req = FileManifestRequest {
            transfer_id: TRANSFER.into(),
            task_index: 0,
            source_dir: dir.to_str().unwrap().into(),
            pattern: file.into(),
            upload_bytes_per_s: upload_bps,
            timeout_ms: 600_000,
            token: TOKEN.to_vec(),
            ..FileManifestRequest::default()
        };
        req.set_selection(if file.is_empty() {
            SelectionKind::SelectionTree
        } else {
            SelectionKind::SelectionFile
        });
        self.node.source.store(source, Ordering::SeqCst);
        self.agents[source].send(MsgType::FileManifestRequest, &req);
        let (from, m) = tokio::time::timeout(PATIENCE, self.manifests.recv())
            .await
            .expect("a manifest in time")
            .unwrap();
        assert_eq!(from, source);
        m
    }

    /// Sends agent `target` a FileStart for `entries` into `target_dir`.
    pub fn start_target(&self, target: usize, start: FileStart) {
        self.agents[target].send(MsgType::FileStart, &start);
    }

    /// Waits for agent `agent`'s final download report (any other
    /// agents' reports seen meanwhile are kept out of the way).
    pub async fn final_download(&mut self, agent: usize) -> FileProgress {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (from, p) = tokio::time::timeout_at(deadline, self.progress.recv())
                .await
                .unwrap_or_else(|_| panic!("no final report from agent {agent} in time"))
                .unwrap();
            if from == agent && p.side == 0 && p.state != FileState::FileRunning as i32 {
                return p;
            }
        }
    }

    /// Final download reports of several agents, in their order.
    pub async fn finals(&mut self, agents: &[usize]) -> Vec<FileProgress> {
        let timed = self.finals_timed(agents, PATIENCE).await;
        timed.into_iter().map(|(p, _)| p).collect()
    }

    /// Final download reports of several agents and when each came.
    pub async fn finals_timed(
        &mut self,
        agents: &[usize],
        patience: Duration,
    ) -> Vec<(FileProgress, Instant)> {
        let deadline = Instant::now() + patience;
        let mut got: HashMap<usize, (FileProgress, Instant)> = HashMap::new();
        while got.len() < agents.len() {
            let (from, p) = tokio::time::timeout_at(deadline, self.progress.recv())
                .await
                .expect("final reports in time")
                .unwrap();
            if agents.contains(&from) && p.side == 0 && p.state != FileState::FileRunning as i32 {
                got.insert(from, (p, Instant::now()));
            }
        }
        agents.iter().map(|a| got.remove(a).unwrap()).collect()
    }

    pub fn cancel(&self, agent: usize) {
        let c = CancelTransfer {
            transfer_id: TRANSFER.into(),
            task_indexes: vec![],
            reason: "test".into(),
        };
        self.agents[agent].send(MsgType::CancelTransfer, &c);
    }
}

/// A FileStart of `manifest` into `target_dir`.
pub fn file_start(manifest: &FileManifest, target_dir: &Path, peers: Vec<Peer>) -> FileStart {
    FileStart {
        transfer_id: TRANSFER.into(),
        task_index: 0,
        target_dir: target_dir.to_str().unwrap().into(),
        auto_mkdir: true,
        timeout_ms: 600_000,
        entries: manifest.entries.clone(),
        peers,
        source_agent: "0:10.0.0.1".into(),
        direct_limit: crate::file::DIRECT_TRANSFER_LIMIT_BYTES,
        p2p_attempts: 3,
        token: TOKEN.to_vec(),
        ..FileStart::default()
    }
}

/// A one-entry manifest for a file the test made up.
pub fn file_entry(path: &str, data: &[u8], piece_size: u32) -> FileEntry {
    let digest = crate::file::digest::digest_reader(data, data.len() as u64, piece_size).unwrap();
    let mut entry = crate::file::wire::entry_to_wire(&crate::file::ManifestEntry {
        path: path.into(),
        mode: 0o644,
        kind: crate::file::EntryKind::File(digest),
    });
    entry.set_type(EntryType::EntryFile);
    entry
}

/// The fake node's work for agent `me`: route what it sends.
async fn route(
    node: Arc<Node>,
    me: usize,
    mut rx: mpsc::Receiver<LinkOut>,
    progress: mpsc::UnboundedSender<(usize, FileProgress)>,
    manifests: mpsc::UnboundedSender<(usize, FileManifest)>,
) {
    while let Some(out) = rx.recv().await {
        let frame = out.frame;
        match frame.msg_type {
            MsgType::FileProgress => {
                let _ = progress.send((me, frame.decode().unwrap()));
            }
            MsgType::FileManifest => {
                let _ = manifests.send((me, frame.decode().unwrap()));
            }
            MsgType::PieceRequest => {
                node.direct_requests.fetch_add(1, Ordering::SeqCst);
                if !node.direct.load(Ordering::SeqCst) {
                    continue;
                }
                let mut req: PieceRequest = frame.decode().unwrap();
                let id = node.next_id.fetch_add(1, Ordering::SeqCst) as u64 + 1000;
                node.pending.lock().insert(id, (me, req.request_id));
                req.request_id = id;
                let source = node.runners.lock()[node.source.load(Ordering::SeqCst)].clone();
                source.handle(&Frame::new(MsgType::PieceRequest, id, &req));
            }
            MsgType::PieceData => {
                let mut body: PieceDataBody = frame.decode().unwrap();
                let Some((target, original)) = node.pending.lock().remove(&body.request_id) else {
                    continue;
                };
                body.request_id = original;
                let runner = node.runners.lock()[target].clone();
                runner.handle(&Frame::new(MsgType::PieceData, original, &body));
            }
            _ => {}
        }
    }
}

/// Temp files (`.<name>.gse-tmp-*`) anywhere under `dir`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if crate::file::install::is_temp_file_name(&e.file_name().to_string_lossy()) {
                found.push(p);
            }
        }
    }
    found
}

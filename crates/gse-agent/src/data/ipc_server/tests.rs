//! Real sockets in a temp dir, byte-exact frames from `test_frames`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use super::*;
use crate::data::ipc_codec::RecordKind;
use crate::data::local_socket::peer_of;
use crate::data::test_frames;

/// Patience for anything the test waits on.
const PATIENCE: Duration = Duration::from_secs(10);

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    rx: mpsc::Receiver<Record>,
    stats: Arc<IpcStats>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn info() -> AgentInfo {
    AgentInfo {
        bk_biz_id: 2,
        cloud_id: 0,
        ip: "10.0.0.5".into(),
        bk_agent_id: "agent-1".into(),
        bk_tenant_id: "system".into(),
        static_dataid: 0,
        host_id: 42,
        hostname: "web-1".into(),
    }
}

fn start_with(max_body: usize, capacity: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/gse/ipc.state.report");
    let (tx, rx) = mpsc::channel(capacity);
    let (_info_tx, info_rx) = watch::channel(info());
    let config = IpcServerConfig {
        path: path.clone(),
        max_body,
        ..Default::default()
    };
    let server = IpcServer::bind(config, info_rx, tx).unwrap();
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Harness {
        _dir: dir,
        path,
        rx,
        stats,
        shutdown,
        task,
    }
}

fn start() -> Harness {
    start_with(DEFAULT_MAX_BODY, 64)
}

impl Harness {
    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).await.unwrap()
    }

    async fn recv(&mut self) -> Record {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a record within patience")
            .expect("channel open")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Sends one frame on a fresh connection and closes it, like libgse's op data.
async fn send_once(h: &Harness, frame: &[u8]) {
    let mut c = h.connect().await;
    c.write_all(frame).await.unwrap();
    c.shutdown().await.unwrap();
}

/// Reads the reply the way libgse does: one `read` of 8 bytes, one of the body.
async fn read_reply_like_libgse(c: &mut UnixStream) -> serde_json::Value {
    let mut head = [0u8; 8];
    let n = tokio::time::timeout(PATIENCE, c.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 8, "header in one read");
    assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), 0x0A);
    let len = u32::from_be_bytes(head[4..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    let n = c.read(&mut body).await.unwrap();
    assert_eq!(n, len, "body in one read");
    serde_json::from_slice(&body).unwrap()
}

/// Asserts the server closed `c`: a read sees EOF (or a reset).
async fn assert_closed_by_server(c: &mut UnixStream) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(PATIENCE, c.read(&mut buf))
        .await
        .expect("closed within patience");
    assert!(matches!(r, Ok(0) | Err(_)), "expected EOF, got {r:?}");
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within patience"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn libgse_dynamic_frame_is_delivered() {
    let mut h = start();
    let payload = br#"{"dataid":1001,"data":[{"x":1}]}"#;
    let frame = test_frames::dynamic(1001, 0, &[], payload);
    assert_eq!(frame.len(), 24 + 24 + 408 + payload.len());
    let mut c = h.connect().await;
    c.write_all(&frame).await.unwrap();
    let r = h.recv().await;
    assert_eq!((r.kind, r.data_id, r.index), (RecordKind::Dynamic, 1001, 0));
    assert!(r.metas.is_empty());
    assert_eq!(&r.payload[..], payload);
    let s = h.stats.snapshot();
    assert_eq!((s.records, s.payload_bytes), (1, payload.len() as u64));
    h.stop().await;
}

#[tokio::test]
async fn dynamic_frame_with_two_metas_is_delivered() {
    let mut h = start();
    let frame = test_frames::dynamic(9, 3, &[("bk_tenant_id", "t1"), ("source", "beat")], b"{}");
    send_once(&h, &frame).await;
    let r = h.recv().await;
    assert_eq!(r.index, 3);
    assert_eq!(r.metas[0], ("bk_tenant_id".into(), "t1".into()));
    assert_eq!(r.metas[1], ("source".into(), "beat".into()));
    h.stop().await;
}

#[tokio::test]
async fn records_carry_the_sending_process() {
    let mut h = start();
    send_once(&h, &test_frames::raw(0xC01, 11, b"who")).await;
    let r = h.recv().await;
    assert_eq!(r.peer.pid, Some(std::process::id() as i32));
    assert_eq!(r.peer.uid, Some(nix::unistd::getuid().as_raw()));
    h.stop().await;
}

#[tokio::test]
async fn a_connection_that_completes_no_frame_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.report");
    let (tx, mut rx) = mpsc::channel(4);
    let (_info_tx, info_rx) = watch::channel(info());
    let config = IpcServerConfig {
        path: path.clone(),
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = IpcServer::bind(config, info_rx, tx).unwrap();
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    // Silent, and half a header: both closed.
    let mut silent = UnixStream::connect(&path).await.unwrap();
    let mut partial = UnixStream::connect(&path).await.unwrap();
    partial
        .write_all(&test_frames::raw(0xC01, 1, b"x")[..10])
        .await
        .unwrap();
    // A connection sending a frame every 100 ms stays.
    let mut busy = UnixStream::connect(&path).await.unwrap();
    for _ in 0..8 {
        busy.write_all(&test_frames::raw(0xC01, 1, b"x"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(&rx.recv().await.unwrap().payload[..], b"x");
    }
    assert_closed_by_server(&mut silent).await;
    assert_closed_by_server(&mut partial).await;
    assert_eq!(stats.snapshot().idle_closed, 2);
    busy.write_all(&test_frames::raw(0xC01, 1, b"y"))
        .await
        .unwrap();
    assert_eq!(&rx.recv().await.unwrap().payload[..], b"y");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn common_and_op_frames_each_on_a_fresh_connection() {
    let mut h = start();
    send_once(&h, &test_frames::raw(0xC01, 11, b"{\"c\":1}")).await;
    let r = h.recv().await;
    assert_eq!(
        (r.kind, r.data_id, &r.payload[..]),
        (RecordKind::Common, 11, &b"{\"c\":1}"[..])
    );
    for i in 0..5u32 {
        send_once(
            &h,
            &test_frames::raw(0xC0C, 12, format!("{{\"op\":{i}}}").as_bytes()),
        )
        .await;
        let r = h.recv().await;
        assert_eq!(r.kind, RecordKind::Op);
        assert_eq!(r.payload, format!("{{\"op\":{i}}}").into_bytes());
    }
    wait_for(|| h.stats.snapshot().open_connections == 0).await;
    let s = h.stats.snapshot();
    assert_eq!((s.connections, s.records, s.bad_frames), (6, 6, 0));
    h.stop().await;
}

#[tokio::test]
async fn agent_info_request_is_answered_in_one_write() {
    let h = start();
    let mut c = h.connect().await;
    // First request: after the socket turns readable, a single read must
    // return the whole reply (header and body were written together).
    c.write_all(&test_frames::sync_config()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = loop {
        tokio::time::timeout(PATIENCE, c.readable())
            .await
            .unwrap()
            .unwrap();
        match c.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue, // spurious wake-up
            r => break r.unwrap(),
        }
    };
    let len = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
    assert_eq!(n, 8 + len, "header and body arrive together");
    // Repeated requests on the same connection (libgse: every 31 s), read
    // the libgse way.
    for _ in 0..3 {
        c.write_all(&test_frames::sync_config()).await.unwrap();
        let v = read_reply_like_libgse(&mut c).await;
        for key in [
            "bizid",
            "bk_biz_id",
            "cloudid",
            "cloud_id",
            "ip",
            "bk_agent_id",
            "bk_tenant_id",
            "static_dataid",
            "hostid",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["ip"], "10.0.0.5");
        assert_eq!(v["bk_agent_id"], "agent-1");
    }
    assert_eq!(h.stats.snapshot().info_replies, 4);
    h.stop().await;
}

#[tokio::test]
async fn info_not_ready_leaves_request_unanswered_then_answers_latest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.report");
    let (tx, _rx) = mpsc::channel(4);
    let (info_tx, info_rx) = watch::channel(AgentInfo::default());
    let config = IpcServerConfig {
        path: path.clone(),
        ..Default::default()
    };
    let server = IpcServer::bind(config, info_rx, tx).unwrap();
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let mut c = UnixStream::connect(&path).await.unwrap();
    c.write_all(&test_frames::sync_config()).await.unwrap();
    wait_for(|| stats.snapshot().info_unanswered == 1).await;
    info_tx.send(info()).unwrap();
    c.write_all(&test_frames::sync_config()).await.unwrap();
    let v = read_reply_like_libgse(&mut c).await;
    assert_eq!(v["hostid"], 42);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn many_concurrent_clients() {
    let mut h = start();
    const CLIENTS: u32 = 8;
    const PER_CLIENT: u32 = 50;
    let mut clients = Vec::new();
    for id in 1..=CLIENTS {
        let mut c = h.connect().await;
        clients.push(tokio::spawn(async move {
            c.write_all(&test_frames::sync_config()).await.unwrap();
            let v = read_reply_like_libgse(&mut c).await;
            assert_eq!(v["cloudid"], 0);
            for n in 0..PER_CLIENT {
                let body = format!("{{\"client\":{id},\"n\":{n}}}");
                c.write_all(&test_frames::dynamic(id, 0, &[], body.as_bytes()))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut per_client = std::collections::HashMap::<u32, Vec<u32>>::new();
    for _ in 0..CLIENTS * PER_CLIENT {
        let r = h.recv().await;
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["client"], r.data_id);
        per_client
            .entry(r.data_id)
            .or_default()
            .push(v["n"].as_u64().unwrap() as u32);
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(per_client.len(), CLIENTS as usize);
    for ns in per_client.values() {
        // Each connection's records arrive in order.
        assert_eq!(ns, &(0..PER_CLIENT).collect::<Vec<_>>());
    }
    h.stop().await;
}

/// Opens a good client, sends `bad` on another connection, and checks that
/// only the bad one is closed and counted.
async fn bad_frame_closes_only_its_connection(h: &mut Harness, bad: &[u8], half_close: bool) {
    let before = h.stats.snapshot().bad_frames;
    let mut good = h.connect().await;
    good.write_all(&test_frames::raw(0xC01, 1, b"before"))
        .await
        .unwrap();
    assert_eq!(&h.recv().await.payload[..], b"before");

    let mut bad_conn = h.connect().await;
    bad_conn.write_all(bad).await.unwrap();
    if half_close {
        bad_conn.shutdown().await.unwrap();
    }
    assert_closed_by_server(&mut bad_conn).await;
    wait_for(|| h.stats.snapshot().bad_frames == before + 1).await;

    good.write_all(&test_frames::dynamic(2, 0, &[], b"after"))
        .await
        .unwrap();
    assert_eq!(&h.recv().await.payload[..], b"after");
    good.write_all(&test_frames::sync_config()).await.unwrap();
    assert_eq!(read_reply_like_libgse(&mut good).await["ip"], "10.0.0.5");
}

#[tokio::test]
async fn malformed_frames_close_only_their_own_connection() {
    let mut h = start_with(64 * 1024, 64);
    // Body length over the limit: refused from the header alone.
    let over = test_frames::header(0xC01, 1, 0, 64 * 1024 + 1);
    bad_frame_closes_only_its_connection(&mut h, &over, false).await;
    // Unknown type.
    bad_frame_closes_only_its_connection(&mut h, &test_frames::raw(0x7777, 1, b"x"), false).await;
    // metaLen > metaMaxLen.
    let bad_meta = test_frames::dynamic_raw(1, 0, 409, 408, 0, &[0; 408], b"{}");
    bad_frame_closes_only_its_connection(&mut h, &bad_meta, false).await;
    // metaMaxLen beyond the body.
    let bad_area = test_frames::dynamic_raw(1, 0, 0, 408, 0, &[0; 8], b"{}");
    bad_frame_closes_only_its_connection(&mut h, &bad_area, false).await;
    // Truncated header, then EOF.
    bad_frame_closes_only_its_connection(&mut h, &test_frames::sync_config()[..10], true).await;
    // Truncated body, then EOF.
    let cut = test_frames::dynamic(1, 0, &[], b"{}");
    bad_frame_closes_only_its_connection(&mut h, &cut[..100], true).await;
    assert_eq!(h.stats.snapshot().bad_frames, 6);
    h.stop().await;
}

#[tokio::test]
async fn full_channel_applies_backpressure_without_loss() {
    let mut h = start_with(DEFAULT_MAX_BODY, 1);
    let mut c = h.connect().await;
    let writer = tokio::spawn(async move {
        for n in 0..20u32 {
            c.write_all(&test_frames::raw(0xC01, n + 1, &[b'x'; 1024]))
                .await
                .unwrap();
        }
        c
    });
    // Nothing is consumed until the server is stuck on a full channel.
    wait_for(|| h.stats.snapshot().records == 1).await;
    for n in 0..20u32 {
        assert_eq!(h.recv().await.data_id, n + 1);
    }
    drop(writer.await.unwrap());
    h.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_removes_the_socket() {
    let h = start();
    let mut c = h.connect().await;
    wait_for(|| h.stats.snapshot().open_connections == 1).await;
    let path = h.path.clone();
    h.shutdown.cancel();
    tokio::time::timeout(PATIENCE, h.task)
        .await
        .unwrap()
        .unwrap();
    assert_closed_by_server(&mut c).await;
    assert!(!path.exists(), "socket file removed");
}

#[tokio::test]
async fn dropped_consumer_stops_the_server() {
    let h = start();
    drop(h.rx);
    tokio::time::timeout(PATIENCE, h.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn socket_file_mode_and_parent_dir() {
    let h = start();
    let meta = std::fs::metadata(&h.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    h.stop().await;
}

#[tokio::test]
async fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.report");
    let bind = |path: &Path| {
        let (tx, _rx) = mpsc::channel(1);
        let (_i, info_rx) = watch::channel(info());
        let config = IpcServerConfig {
            path: path.to_path_buf(),
            socket_mode: 0o600,
            ..Default::default()
        };
        IpcServer::bind(config, info_rx, tx)
    };
    // A socket file left behind by a dead process.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = bind(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // While it listens, a second bind refuses and leaves the file alone.
    assert!(matches!(bind(&path), Err(IpcServerError::InUse { .. })));
    assert!(UnixStream::connect(&path).await.is_ok());
    drop(server);
    // A regular file is never removed.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(
        bind(&file),
        Err(IpcServerError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn peer_credentials_name_the_client_process() {
    let (a, _b) = UnixStream::pair().unwrap();
    let peer = peer_of(&a);
    assert_eq!(peer.pid, Some(std::process::id() as i32));
    assert!(peer.uid.is_some());
    assert!(
        peer.to_string()
            .starts_with(&format!("pid {} uid ", std::process::id()))
    );
}

#[tokio::test]
async fn chunked_server_hands_over_each_read_in_order_and_bounds_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.report");
    let (tx, mut rx) = mpsc::channel(4);
    let (_info_tx, info_rx) = watch::channel(info());
    let config = IpcServerConfig {
        path: path.clone(),
        ..Default::default()
    };
    let server = IpcServer::bind_chunked(config, info_rx, tx).unwrap();
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    // 600 records of 1 KiB in one write, and a frame split across writes.
    let mut c = UnixStream::connect(&path).await.unwrap();
    let mut all = Vec::new();
    for n in 0..600u32 {
        all.extend(test_frames::raw(0xC01, n + 1, &[b'x'; 1024]));
    }
    let last = test_frames::raw(0xC01, 601, b"tail");
    let writer = tokio::spawn(async move {
        c.write_all(&all).await.unwrap();
        c.write_all(&last[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(&last[10..]).await.unwrap();
        c
    });
    let mut next = 1;
    while next <= 601 {
        let chunk = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!chunk.is_empty(), "no empty chunks");
        let payload: usize = chunk.iter().map(|r| r.payload.len()).sum();
        assert!(payload <= CHUNK_MAX_BYTES, "a chunk of {payload} bytes");
        for r in chunk {
            assert_eq!(r.data_id, next, "in order, none lost");
            next += 1;
        }
    }
    assert_eq!(stats.snapshot().records, 601);
    assert_eq!(stats.snapshot().payload_bytes, 600 * 1024 + 4);
    drop(writer.await.unwrap());
    shutdown.cancel();
    task.await.unwrap();
}

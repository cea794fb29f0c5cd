//! Pieces between real agents over the peer link.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use gse_proto::link::{FileState, PeerHello, PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};
use tokio::time::Instant;

use super::harness::*;
use crate::file::download::swarm::{PEER_MAX_FAILURES, PER_PEER_DEPTH};
use crate::file::peer::client::{PeerReader, PeerWriter};
use crate::file::peer::{self, Outgoing, PeerError};
use crate::file::store::{Source, TaskShare};
use crate::file::wire::PieceDataBody;
use crate::file::{EntryKind, PieceSet};

const MB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_three_targets_exchange_a_multi_mb_file_p2p() {
    let certs = certs();
    let mut world = World::start(&certs, 4, |_, _| {}).await;
    let data = content(12 * MB + 4321, 1);
    std::fs::write(world.agents[0].path("big.bin"), &data).unwrap();
    let src_dir = world.agents[0].dir.path().to_path_buf();
    // A capped source makes the targets share among themselves.
    let manifest = world.manifest(0, &src_dir, "big.bin", 8 * MB as u64).await;
    assert_eq!(manifest.error_code, 0, "{}", manifest.error_message);
    world.node.direct.store(false, Ordering::SeqCst);
    let peers: Vec<_> = (0..4).map(|i| world.agents[i].peer(i == 0)).collect();
    for t in 1..4 {
        let start = file_start(&manifest, &world.agents[t].path("out"), peers.clone());
        world.start_target(t, start);
    }
    let finals = world.finals(&[1, 2, 3]).await;
    for (t, p) in (1..4).zip(&finals) {
        assert_eq!(p.state, FileState::FileDone as i32, "agent {t}: {p:?}");
        assert_eq!((p.bytes_p2p, p.bytes_direct), (data.len() as u64, 0));
        assert_eq!((p.files_done, p.files_total), (1, 1));
        let got = std::fs::read(world.agents[t].path("out/big.bin")).unwrap();
        assert!(got == data, "agent {t} got different bytes");
        assert!(temp_files(&world.agents[t].path("out")).is_empty());
    }
    assert_eq!(world.node.direct_requests.load(Ordering::SeqCst), 0);
    let share = world.agents[0].service.store.get(TRANSFER, 0).unwrap();
    let copies = share.served() as f64 / data.len() as f64;
    assert!(
        copies < 2.5,
        "the source sent {copies:.2} copies to three targets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f5_corrupt_pieces_are_refused_and_fetched_elsewhere() {
    let certs = certs();
    let mut world = World::start(&certs, 3, |_, _| {}).await;
    // Enough pieces that a peer served in full could not pass the bound.
    let data = content(16 * MB + 17, 2);
    std::fs::write(world.agents[0].path("f.bin"), &data).unwrap();
    let src_dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &src_dir, "f.bin", 0).await;
    // Agent 2 claims every piece and serves garbage.
    let garbage = world.agents[2].path("garbage");
    std::fs::write(&garbage, vec![0x5a; data.len()]).unwrap();
    let entries = manifest
        .entries
        .iter()
        .map(|e| crate::file::wire::entry_from_wire(e).unwrap())
        .collect::<Vec<_>>();
    let EntryKind::File(digest) = entries[0].kind.clone() else {
        panic!()
    };
    let pieces = digest.piece_count();
    let share = TaskShare::new(TRANSFER.into(), 0, TOKEN.to_vec(), Arc::new(entries), None);
    share.set_source(
        0,
        Source::Local {
            file: Arc::new(std::fs::File::open(&garbage).unwrap()),
            have: PieceSet::full(pieces),
        },
    );
    let bad = Arc::new(share);
    world.agents[2].service.store.insert(bad.clone());
    let peers = vec![world.agents[0].peer(true), world.agents[2].peer(false)];
    let start = file_start(&manifest, &world.agents[1].path("out"), peers);
    world.start_target(1, start);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    assert_eq!(
        std::fs::read(world.agents[1].path("out/f.bin")).unwrap(),
        data
    );
    assert!(bad.served() > 0, "the bad peer was asked");
    // Requests already in flight when the ban lands are still served, and
    // verification runs beside the pipeline: at most one depth's worth more
    // than the failures plus the requests sent before they were counted.
    let bound = (PEER_MAX_FAILURES as u64 + 2 * PER_PEER_DEPTH as u64) * digest.piece_size as u64;
    assert!(
        bad.served() <= bound,
        "the bad peer is dropped after a few bad pieces (served {})",
        bad.served()
    );
}

#[tokio::test]
async fn peer_hello_with_a_wrong_token_or_task_is_refused() {
    let certs = certs();
    let mut world = World::start(&certs, 1, |_, _| {}).await;
    std::fs::write(world.agents[0].path("f"), content(50_000, 3)).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    world.manifest(0, &dir, "f", 0).await;
    let dialer = world.agents[0].service.peer_dialer.clone();
    let addr = world.agents[0].service.listen_addr.unwrap();
    let mut hello = PeerHello {
        transfer_id: TRANSFER.into(),
        task_index: 0,
        token: b"guess".to_vec(),
        agent: "0:10.9.9.9".into(),
    };
    match peer::connect(&dialer, addr, &hello).await {
        Err(PeerError::Refused { message, .. }) => {
            assert!(message.contains("wrong token"), "{message}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.0)),
    }
    hello.token = TOKEN.to_vec();
    hello.task_index = 5;
    assert!(matches!(
        peer::connect(&dialer, addr, &hello).await,
        Err(PeerError::Refused { .. })
    ));
    hello.task_index = 0;
    let (ack, _, _) = peer::connect(&dialer, addr, &hello).await.unwrap();
    assert!(ack.accepted);
    assert_eq!(ack.have.len(), 1, "the seed announces its file");
}

/// A bare peer connection to agent 0 of `world`, for the task.
async fn raw_peer(world: &World) -> (PeerReader, PeerWriter) {
    let hello = PeerHello {
        transfer_id: TRANSFER.into(),
        task_index: 0,
        token: TOKEN.to_vec(),
        agent: "0:10.9.9.9".into(),
    };
    let service = &world.agents[0].service;
    let (_, reader, writer) =
        peer::connect(&service.peer_dialer, service.listen_addr.unwrap(), &hello)
            .await
            .unwrap();
    (reader, writer)
}

/// Requests `pieces` of entry 0 in one write.
async fn ask(writer: &mut PeerWriter, pieces: std::ops::Range<u32>) {
    for piece in pieces {
        let req = PieceRequest {
            transfer_id: TRANSFER.into(),
            task_index: 0,
            entry_index: 0,
            piece,
            request_id: u64::from(piece),
        };
        let frame = Frame::new(MsgType::PieceRequest, u64::from(piece), &req);
        peer::write_outgoing(writer, Outgoing::Frame(frame))
            .await
            .unwrap();
    }
    tokio::io::AsyncWriteExt::flush(writer).await.unwrap();
}

/// The next `n` answers: (request id, status, data length), sorted.
async fn answers(reader: &mut PeerReader, n: usize) -> Vec<(u64, i32, usize)> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = tokio::time::timeout(PATIENCE, reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if frame.msg_type == MsgType::PieceData {
            let body: PieceDataBody = frame.decode().unwrap();
            got.push((body.request_id, body.status, body.data.len()));
        }
    }
    got.sort();
    got
}

const OK: i32 = PieceStatus::PieceOk as i32;
const BUSY: i32 = PieceStatus::PieceBusy as i32;

#[tokio::test]
async fn c4_upload_slots_answer_busy_when_taken() {
    let certs = certs();
    let mut world = World::start(&certs, 1, |_, f| f.upload_slots = 1).await;
    std::fs::write(world.agents[0].path("f"), content(4 * MB, 4)).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    world.manifest(0, &dir, "f", 0).await;
    let (mut reader, mut writer) = raw_peer(&world).await;
    // Three requests in one write: the first takes the only slot while
    // the others are read.
    ask(&mut writer, 0..3).await;
    assert_eq!(
        answers(&mut reader, 3).await,
        [(0, OK, MB), (1, BUSY, 0), (2, BUSY, 0)]
    );
}

#[tokio::test]
async fn c4_a_long_upload_queue_answers_busy() {
    let certs = certs();
    let mut world = World::start(&certs, 1, |_, _| {}).await;
    std::fs::write(world.agents[0].path("f"), content(4 * MB, 4)).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    // 1 MiB/s: the first piece goes at once and books the next second.
    world.manifest(0, &dir, "f", MB as u64).await;
    let (mut reader, mut writer) = raw_peer(&world).await;
    ask(&mut writer, 0..1).await;
    assert_eq!(answers(&mut reader, 1).await, [(0, OK, MB)]);
    ask(&mut writer, 1..3).await;
    assert_eq!(answers(&mut reader, 2).await, [(1, BUSY, 0), (2, BUSY, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_download_cap_is_respected() {
    let certs = certs();
    let mut world = World::start(&certs, 2, |_, _| {}).await;
    let data = content(5 * MB, 5);
    std::fs::write(world.agents[0].path("f"), &data).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "f", 0).await;
    let mut start = file_start(
        &manifest,
        &world.agents[1].path("out"),
        vec![world.agents[0].peer(true)],
    );
    start.download_bytes_per_s = 2 * MB as u64;
    let began = Instant::now();
    world.start_target(1, start);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    // 5 pieces at 2 MiB/s: the first at once, then one every 0.5 s.
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1900), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_agent_upload_cap_is_respected() {
    let certs = certs();
    let mut world = World::start(&certs, 2, |i, f| {
        if i == 0 {
            f.upload_speed_mb = 2;
        }
    })
    .await;
    let data = content(5 * MB, 6);
    std::fs::write(world.agents[0].path("f"), &data).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "f", 0).await;
    world.node.direct.store(false, Ordering::SeqCst);
    let start = file_start(
        &manifest,
        &world.agents[1].path("out"),
        vec![world.agents[0].peer(true)],
    );
    let began = Instant::now();
    world.start_target(1, start);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1900), "took {took:?}");
}

//! Ending transfers early and surviving: terminate, disconnects (sources,
//! targets, relays), the deadline, a server restart, polls by agent and
//! transfers leaving memory.

use std::time::{Duration, Instant};

use super::*;
use crate::role::file::FileError;
use crate::role::file::codes::*;
use crate::role::file::spec::{AgentName, ZoneHop};
use crate::role::file::writer::MEMORY_TTL;

fn name(n: &str) -> AgentName {
    AgentName {
        bk_agent_id: n.into(),
        bk_container_id: String::new(),
    }
}

async fn running(targets: &[&str]) -> (Harness, String) {
    let h = harness().await;
    let id = h.start(spec("0:10.0.0.1", targets)).await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.link.sent.lock().clear();
    (h, id)
}

#[tokio::test]
async fn terminate_all_marks_126_at_once_and_cancels_everyone() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    h.done("10.0.0.3", &id).await;
    h.svc.terminate(&id, None).await.unwrap();
    let all = h.results(&id).await;
    assert_eq!(
        (all[0].status, all[0].error_code),
        (STATUS_TERMINATED, ERR_TERMINATED)
    );
    assert_eq!(
        (all[1].status, all[1].error_code),
        (STATUS_TERMINATED, ERR_TERMINATED)
    );
    assert_eq!(
        all[2].error_code, ERR_NONE,
        "finished entries stay as they are"
    );
    let mut to: Vec<AgentKey> = h
        .link
        .cancels()
        .await
        .into_iter()
        .map(|(k, c)| {
            assert_eq!(
                (c.task_indexes.as_slice(), c.reason.as_str()),
                (&[0][..], "terminated")
            );
            k
        })
        .collect();
    to.sort();
    assert_eq!(to, [key("10.0.0.1"), key("10.0.0.2"), key("10.0.0.3")]);
    // Terminating again, or after the end, is accepted and does nothing.
    h.svc.terminate(&id, None).await.unwrap();
    assert!(h.link.cancels().await.is_empty());
}

#[tokio::test]
async fn terminate_one_target_stops_only_its_download() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    h.svc
        .terminate(&id, Some(&[name("id-10.0.0.2")]))
        .await
        .unwrap();
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_TERMINATED);
    assert_eq!(h.download(&id, "10.0.0.3").await.error_code, ERR_RUNNING);
    assert_eq!(h.upload(&id).await.error_code, ERR_RUNNING);
    let cancels = h.link.cancels().await;
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].0, key("10.0.0.2"));

    // The last target terminated ends the upload as terminated too.
    h.svc
        .terminate(&id, Some(&[name("0:10.0.0.3")]))
        .await
        .unwrap();
    assert_eq!(h.upload(&id).await.error_code, ERR_TERMINATED);
}

#[tokio::test]
async fn terminate_naming_the_source_stops_its_whole_task() {
    let (h, id) = running(&["0:10.0.0.2"]).await;
    h.svc
        .terminate(&id, Some(&[name("0:10.0.0.1")]))
        .await
        .unwrap();
    assert!(
        h.results(&id)
            .await
            .iter()
            .all(|e| e.error_code == ERR_TERMINATED)
    );
}

#[tokio::test]
async fn unknown_transfers_are_not_found() {
    let h = harness().await;
    let err = h.svc.terminate("GSETASK:F:nope:1", None).await.unwrap_err();
    assert!(matches!(err, FileError::NotFound(_)));
    assert!(err.to_string().contains("file.retention"));
    assert!(matches!(
        h.svc.results("GSETASK:F:nope:1", None).await,
        Err(FileError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_target_going_offline_fails_its_download_with_117() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    // A connection the FileStart did not go on changes nothing.
    h.svc.on_disconnect(
        key("10.0.0.2"),
        crate::role::task::tests::held(FIRST_CONN + 1),
    );
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_RUNNING);
    h.svc
        .on_disconnect(key("10.0.0.2"), crate::role::task::tests::held(FIRST_CONN));
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert_eq!(e.error_msg, "agent went offline mid-transfer");
    assert_eq!(h.download(&id, "10.0.0.3").await.error_code, ERR_RUNNING);
}

#[tokio::test]
async fn a_source_going_offline_mid_transfer_ends_only_its_upload() {
    let (h, id) = running(&["0:10.0.0.2"]).await;
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(FIRST_CONN));
    let up = h.upload(&id).await;
    assert_eq!(up.error_code, ERR_AGENT_DOWN);
    assert!(
        up.error_msg.contains("targets finish from their peers"),
        "{}",
        up.error_msg
    );
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_RUNNING);
    h.done("10.0.0.2", &id).await;
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_NONE);
    assert_eq!(
        h.upload(&id).await.error_code,
        ERR_AGENT_DOWN,
        "final entries never change"
    );
}

#[tokio::test]
async fn a_source_going_offline_before_its_manifest_fails_the_task() {
    let h = harness().await;
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(FIRST_CONN));
    for e in h.results(&id).await {
        assert_eq!(e.error_code, ERR_AGENT_DOWN, "{e:?}");
    }
    // A manifest arriving after that starts nothing.
    h.manifest("10.0.0.1", &id, 0).await;
    assert!(h.link.starts().await.is_empty());
}

#[tokio::test]
async fn f8_a_relay_going_away_leaves_its_peers_peer_sets() {
    let h = harness().await;
    for (ip, zone) in [
        ("10.0.0.1", "a"),
        ("10.0.0.3", "b"),
        ("10.0.0.4", "b"),
        ("10.0.0.5", "b"),
    ] {
        h.link.set_zone(ip, zone);
    }
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.3", "0:10.0.0.4"]);
    s.zone_chain = vec![ZoneHop {
        zone: "b".into(),
        relays: vec![agent("0:10.0.0.5")],
    }];
    let id = h.start(s).await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.link.sent.lock().clear();
    h.svc
        .on_disconnect(key("10.0.0.5"), crate::role::task::tests::held(FIRST_CONN));
    let mut sets = h.link.peer_sets().await;
    sets.sort_by_key(|(k, _)| *k);
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[0].0, key("10.0.0.3"));
    let peers: Vec<&str> = sets[0].1.peers.iter().map(|p| p.agent.as_str()).collect();
    assert_eq!(peers, ["0:10.0.0.4"]);
    assert!(
        h.results(&id)
            .await
            .iter()
            .all(|e| e.error_code == ERR_RUNNING),
        "relays are no entries"
    );
}

#[tokio::test]
async fn the_deadline_ends_everything_with_120_and_cancels_everyone() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    h.done("10.0.0.3", &id).await;
    h.link.sent.lock().clear();
    h.svc.close_overdue(Instant::now());
    assert_eq!(h.upload(&id).await.error_code, ERR_RUNNING, "not due yet");
    h.svc
        .close_overdue(Instant::now() + Duration::from_secs(3601));
    let all = h.results(&id).await;
    assert_eq!(
        (all[0].status, all[0].error_code),
        (STATUS_TIMEOUT, ERR_TIMEOUT)
    );
    assert_eq!(
        (all[1].status, all[1].error_code),
        (STATUS_TIMEOUT, ERR_TIMEOUT)
    );
    assert!(
        all[1].error_msg.contains("timeout of 1h"),
        "{}",
        all[1].error_msg
    );
    assert_eq!(all[2].error_code, ERR_NONE);
    let cancels = h.link.cancels().await;
    assert_eq!(cancels.len(), 3, "one per agent: {cancels:?}");
    assert!(
        cancels
            .iter()
            .all(|(_, c)| c.task_indexes.is_empty() && c.reason == "timeout")
    );
    assert_eq!(h.svc.counts().1, 0);
}

#[tokio::test]
async fn a_restart_keeps_finished_entries_and_closes_running_ones() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    h.done("10.0.0.2", &id).await;
    h.flush().await;
    let before = h.results(&id).await;

    let svc = service(&h.store, &h.link, FileConfig::default()).await;
    let after = svc.results(&id, None).await.unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[1], before[1], "a finished entry reads as before");
    for e in [&after[0], &after[2]] {
        assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
        assert!(e.error_msg.contains("server restarted"), "{}", e.error_msg);
    }
}

#[tokio::test]
async fn polls_by_agent_pick_uploads_by_source_and_downloads_by_target() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    let only = |names: &[&str]| names.iter().map(|n| name(n)).collect::<Vec<_>>();
    let got = h
        .svc
        .results(&id, Some(&only(&["id-10.0.0.3"])))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].mode, got[0].dest_agent_id.as_str()),
        (1, "0:10.0.0.3")
    );
    let got = h
        .svc
        .results(&id, Some(&only(&["0:10.0.0.1", "0:10.0.0.2"])))
        .await
        .unwrap();
    assert_eq!(got.iter().map(|e| e.mode).collect::<Vec<_>>(), [0, 1]);
    let got = h
        .svc
        .results(&id, Some(&only(&["0:10.0.0.7"])))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(
        h.svc.results(&id, Some(&[])).await.unwrap().len(),
        3,
        "empty = all"
    );
}

#[tokio::test]
async fn finished_transfers_leave_memory_and_are_read_from_the_store() {
    let (h, id) = running(&["0:10.0.0.2"]).await;
    h.done("10.0.0.2", &id).await;
    let before = h.results(&id).await;
    h.svc.evict(Instant::now() + MEMORY_TTL, usize::MAX);
    assert_eq!(h.svc.counts().0, 1, "unsaved transfers stay");
    h.flush().await;
    h.svc.evict(Instant::now() + MEMORY_TTL, usize::MAX);
    assert_eq!(h.svc.counts().0, 0);
    assert_eq!(h.results(&id).await, before);
    h.svc.terminate(&id, None).await.unwrap();
}

#[tokio::test]
async fn progress_alone_is_saved_paced_and_final_changes_promptly() {
    let (h, id) = running(&["0:10.0.0.2", "0:10.0.0.3"]).await;
    h.flush().await;
    let p = FileProgress {
        done_bytes: 10,
        total_bytes: 100,
        ..FileProgress::default()
    };
    h.progress(
        "10.0.0.2",
        &id,
        ProgressSide::SideDownload,
        FileState::FileRunning,
        p,
    )
    .await;
    assert!(h.svc.flush(false, &mut Writer::default()).await);
    let stored = h.store.get_file_transfer(&id).await.unwrap().unwrap();
    assert_eq!(stored.entries[1].progress, 0, "progress waits for its pace");
    h.done("10.0.0.3", &id).await;
    // The last save was just now: a final change waits for the short pace.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(h.svc.flush(false, &mut Writer::default()).await);
    let stored = h.store.get_file_transfer(&id).await.unwrap().unwrap();
    assert_eq!(stored.entries[2].error_code, ERR_NONE);
    assert_eq!(stored.entries[1].progress, 10, "saved along with it");
}

#[tokio::test]
async fn a_store_that_refuses_transfers_leaves_them_in_memory_for_polls() {
    let h = harness().await;
    // The task role's flaky store, refusing every write.
    let refusing: Arc<dyn StateStore> = Arc::new(crate::role::task::tests::FlakyStore {
        inner: h.store.clone(),
        fail_writes: usize::MAX.into(),
    });
    let svc = FileService::new(FileParts {
        node_id: NODE.into(),
        config: FileConfig::default(),
        store: refusing,
        link: Some(h.link.clone() as Arc<dyn FileLink>),
        sender: h.link.base.sender(),
    });
    let id = svc
        .start_transfer(spec("0:10.0.0.1", &["0:10.0.0.2"]), "bk_job")
        .await
        .unwrap();
    svc.terminate(&id, None).await.unwrap();
    let mut failing = Writer::default();
    assert!(!svc.flush(true, &mut failing).await);
    assert!(failing.failing());
    svc.evict(Instant::now() + MEMORY_TTL, 0);
    let all = svc.results(&id, None).await.unwrap();
    assert!(
        all.iter().all(|e| e.error_code == ERR_TERMINATED),
        "{all:?}"
    );
    assert!(
        !svc.flush(true, &mut failing).await,
        "retried with the next batch"
    );
}

/// A node link that cannot reach any node.
struct RefusingForwarder;

#[async_trait::async_trait]
impl crate::cluster::sender::NodeForwarder for RefusingForwarder {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        _epoch: u64,
        _frame: Frame,
    ) -> Result<(), crate::cluster::sender::SendError> {
        Err(crate::cluster::sender::SendError::RemoteUnreachable {
            agent,
            node: node_id.into(),
            reason: "connection refused".into(),
        })
    }
}

#[tokio::test]
async fn a_target_whose_node_cannot_be_reached_fails_with_that_reason() {
    let h = harness().await;
    h.svc.sender.set_forwarder(Arc::new(RefusingForwarder));
    // 10.0.0.10 is held by node "n2": with a node link it takes part ...
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.10"]))
        .await;
    assert_eq!(h.download(&id, "10.0.0.10").await.error_code, ERR_RUNNING);
    // ... until its FileStart cannot be forwarded there.
    h.manifest("10.0.0.1", &id, 0).await;
    let far = h.download(&id, "10.0.0.10").await;
    assert_eq!(far.error_code, ERR_AGENT_DOWN, "{far:?}");
    assert!(
        far.error_msg.contains("held by node n2") && far.error_msg.contains("connection refused"),
        "{far:?}"
    );
    let starts = h.link.starts().await;
    assert_eq!(starts.len(), 1, "only the local target got its FileStart");
    assert_eq!(starts[0].0, key("10.0.0.2"));
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_RUNNING);
}

#[tokio::test]
async fn a_pushed_file_is_served_by_the_node_and_its_bytes_count_against_memory() {
    use crate::role::file::spec::SourceFrom;
    let h = harness().await;
    let mut push = spec("0:10.0.0.1", &["0:10.0.0.2"]);
    push.tasks[0].source.from = SourceFrom::Content(bytes::Bytes::from(vec![b'x'; 100]));
    let id = h.start(push).await;
    // No manifest request: the node made the manifest and sent FileStart.
    assert!(h.link.manifest_requests().await.is_empty());
    let starts = h.link.starts().await;
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].1.entries[0].size, 100);
    assert!(
        starts[0].1.direct_limit >= 100,
        "fetched direct, from the node"
    );
    // A piece request is answered by the node itself.
    let req = PieceRequest {
        transfer_id: id.clone(),
        task_index: 0,
        entry_index: 0,
        piece: 0,
        request_id: 7,
    };
    h.frame("10.0.0.2", Frame::new(MsgType::PieceRequest, 0, &req))
        .await;
    let data = h.link.piece_data().await;
    assert_eq!(data.len(), 1);
    assert_eq!((data[0].1.request_id, data[0].1.data.len()), (7, 100));
    h.done("10.0.0.2", &id).await;
    h.flush().await;
    // Finished and saved: over a memory budget of pushed bytes, it leaves.
    let memory = Memory {
        max_bytes: 50,
        ..crate::role::file::writer::MEMORY
    };
    h.svc.jobs.evict(Instant::now(), &memory);
    assert_eq!(h.svc.counts().0, 0);
    assert_eq!(h.download(&id, "10.0.0.2").await.status, STATUS_SUCCESS);
}

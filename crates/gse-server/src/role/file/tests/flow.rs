//! From the source's manifest to the end of a task: FileStart per target
//! with its peers, progress into entries, the upload ending with its
//! downloads, zones (F8, F9, 707) and oversized manifests (119).

use gse_proto::link::FileRole;

use super::*;
use crate::role::file::PassThroughRule;
use crate::role::file::codes::*;
use crate::role::file::spec::{BYTES_PER_MB, ZoneHop, ZonePair};

#[tokio::test]
async fn a_manifest_sends_every_target_its_file_start() {
    let h = harness().await;
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]);
    s.download_speed = 3;
    s.auto_mkdir = true;
    s.tasks[0].target.file_name = "b.txt".into();
    s.tasks[0].target.permission = 0o640;
    s.tasks[0].targets[1].user = "app".into();
    let id = h.start(s).await;
    let token = h.link.manifest_requests().await[0].1.token.clone();
    h.manifest("10.0.0.1", &id, 0).await;

    let mut starts = h.link.starts().await;
    starts.sort_by_key(|(k, _)| *k);
    assert_eq!(starts.len(), 2);
    let (to, fs) = &starts[0];
    assert_eq!(*to, key("10.0.0.2"));
    assert_eq!(fs.transfer_id, id);
    assert_eq!(fs.role, FileRole::RoleTarget as i32);
    assert_eq!(
        (fs.target_dir.as_str(), fs.target_name.as_str()),
        ("/tmp/dst", "b.txt")
    );
    assert_eq!(fs.permission, 0o640);
    assert!(fs.auto_mkdir);
    assert_eq!(fs.download_bytes_per_s, 3 * BYTES_PER_MB);
    assert_eq!(fs.entries, entries(), "entries pass through unchanged");
    assert_eq!(fs.source_agent, "0:10.0.0.1");
    assert_eq!((fs.direct_limit, fs.p2p_attempts), (10240, 3));
    assert_eq!(fs.token, token);
    assert!(fs.timeout_ms > 0);
    assert_eq!(
        fs.owner, "",
        "no task owner and no user: the agent's own user"
    );
    assert!(fs.peers[0].is_source);
    assert_eq!(fs.peers[0].addr, "10.0.0.1:20020");
    let agents: Vec<&str> = fs.peers.iter().map(|p| p.agent.as_str()).collect();
    assert_eq!(agents, ["0:10.0.0.1", "0:10.0.0.3"]);
    assert_eq!(
        starts[1].1.owner, "app",
        "the target agent's user owns its files"
    );

    let all = h.results(&id).await;
    assert!(
        all.iter().all(|e| e.size == 100),
        "size = the manifest's file bytes"
    );
    assert_eq!(all[0].status, STATUS_RUNNING);
    assert!(
        all[0].status_info.contains("1 files, 100 bytes"),
        "{}",
        all[0].status_info
    );
    assert_eq!(all[1].status, STATUS_RUNNING);
}

#[tokio::test]
async fn the_task_owner_wins_over_agent_users() {
    let h = harness().await;
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2"]);
    s.tasks[0].target.owner = "www:www".into();
    s.tasks[0].targets[0].user = "app".into();
    let id = h.start(s).await;
    h.manifest("10.0.0.1", &id, 0).await;
    assert_eq!(h.link.starts().await[0].1.owner, "www:www");
}

#[tokio::test]
async fn a_targets_fallback_reason_is_kept_and_shown_in_its_status() {
    let h = harness().await;
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    h.manifest("10.0.0.1", &id, 0).await;
    let why = "source 0:10.0.0.1 at 10.0.0.1:20020 unreachable over P2P: connect timed out";
    let running = FileProgress {
        done_bytes: 10,
        total_bytes: 100,
        bytes_direct: 10,
        fallback_reason: why.into(),
        ..FileProgress::default()
    };
    h.progress(
        "10.0.0.2",
        &id,
        ProgressSide::SideDownload,
        FileState::FileRunning,
        running,
    )
    .await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!(e.p2p_fallback, why);
    assert!(
        e.status_info.starts_with("downloading: 10 of 100 bytes"),
        "{}",
        e.status_info
    );
    assert!(e.status_info.ends_with(why), "{}", e.status_info);
    // A later report without it does not erase it; the final status says it.
    h.done("10.0.0.2", &id).await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!((e.error_code, e.p2p_fallback.as_str()), (ERR_NONE, why));
    assert_eq!(
        e.status_info,
        format!("done; P2P fell back to direct through the server: {why}")
    );
}

#[tokio::test]
async fn progress_fills_entries_and_the_upload_ends_with_its_downloads() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.link.sent.lock().clear();

    let running = FileProgress {
        done_bytes: 50,
        total_bytes: 100,
        bytes_p2p: 40,
        bytes_direct: 10,
        bytes_per_s: 2048,
        files_done: 0,
        files_total: 1,
        ..FileProgress::default()
    };
    h.progress(
        "10.0.0.2",
        &id,
        ProgressSide::SideDownload,
        FileState::FileRunning,
        running,
    )
    .await;
    let upload = FileProgress {
        bytes_per_s: 10240,
        ..FileProgress::default()
    };
    h.progress(
        "10.0.0.1",
        &id,
        ProgressSide::SideUpload,
        FileState::FileRunning,
        upload,
    )
    .await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!(
        (e.status, e.error_code, e.progress, e.speed_kbps),
        (STATUS_RUNNING, ERR_RUNNING, 50, 2)
    );
    assert_eq!((e.bytes_p2p, e.bytes_direct), (40, 10));
    assert!(e.start_ms > 0);
    let up = h.upload(&id).await;
    assert_eq!(
        (up.speed_kbps, up.progress),
        (10, 25),
        "upload: its speed, its downloads' mean progress"
    );

    h.done("10.0.0.2", &id).await;
    let failed = FileProgress {
        error_code: 704,
        error_message: "cannot write /tmp/dst/a.txt: disk full; free space and retry".into(),
        ..FileProgress::default()
    };
    h.progress(
        "10.0.0.3",
        &id,
        ProgressSide::SideDownload,
        FileState::FileFailed,
        failed,
    )
    .await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!(
        (e.status, e.error_code, e.progress, e.speed_kbps),
        (STATUS_SUCCESS, ERR_NONE, 100, 0)
    );
    assert_eq!((e.bytes_p2p, e.bytes_direct), (64, 36));
    assert!(e.end_ms >= e.start_ms);
    let e = h.download(&id, "10.0.0.3").await;
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_CANNOT_WRITE));
    assert!(e.error_msg.contains("disk full"));
    let up = h.upload(&id).await;
    assert_eq!(
        (up.status, up.error_code, up.progress),
        (STATUS_SUCCESS, ERR_NONE, 100)
    );

    let mut cancels = h.link.cancels().await;
    cancels.sort_by_key(|(k, _)| *k);
    let to: Vec<AgentKey> = cancels.iter().map(|(k, _)| *k).collect();
    assert_eq!(to, [key("10.0.0.1"), key("10.0.0.2"), key("10.0.0.3")]);
    assert!(
        cancels
            .iter()
            .all(|(_, c)| c.task_indexes == [0] && c.reason == "finished")
    );
    assert_eq!(h.svc.counts(), (1, 0));

    // Late reports change nothing.
    h.progress(
        "10.0.0.2",
        &id,
        ProgressSide::SideDownload,
        FileState::FileFailed,
        FileProgress::default(),
    )
    .await;
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_NONE);
}

#[tokio::test]
async fn unknown_failure_codes_are_701_and_never_success() {
    let h = harness().await;
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.progress(
        "10.0.0.2",
        &id,
        ProgressSide::SideDownload,
        FileState::FileFailed,
        FileProgress::default(),
    )
    .await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!(e.error_code, ERR_TRANSFER_FAILED);
    assert!(e.error_msg.contains("without a message"), "{}", e.error_msg);
}

#[tokio::test]
async fn a_manifest_error_fails_the_task_with_the_sources_code() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.link.sent.lock().clear();
    let m = FileManifest {
        transfer_id: id.clone(),
        error_code: 705,
        error_message: "/data/a.txt does not exist; check the source path".into(),
        ..FileManifest::default()
    };
    // Only the source may answer.
    h.frame("10.0.0.2", Frame::new(MsgType::FileManifest, 0, &m))
        .await;
    assert_eq!(h.upload(&id).await.error_code, ERR_RUNNING);
    h.frame("10.0.0.1", Frame::new(MsgType::FileManifest, 0, &m))
        .await;
    for e in h.results(&id).await {
        assert_eq!(
            (e.status, e.error_code),
            (STATUS_FAILED, ERR_SOURCE_NOT_FOUND),
            "{e:?}"
        );
        assert!(e.error_msg.contains("/data/a.txt does not exist"));
    }
    assert!(h.link.starts().await.is_empty());
    let cancels = h.link.cancels().await;
    assert!(cancels.iter().any(|(k, _)| *k == key("10.0.0.1")));
}

#[tokio::test]
async fn an_agent_named_twice_gets_one_file_start_and_both_entries_move() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "id-10.0.0.2"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    assert_eq!(h.link.starts().await.len(), 1);
    h.done("10.0.0.2", &id).await;
    let all = h.results(&id).await;
    assert!(all.iter().all(|e| e.error_code == ERR_NONE), "{all:?}");
    assert_eq!(
        all[2].dest_agent_id, "id-10.0.0.2",
        "names are echoed as sent"
    );
}

#[tokio::test]
async fn f8_707_an_isolated_zone_fails_with_what_to_do() {
    let h = harness().await;
    h.link.set_zone("10.0.0.1", "a");
    h.link.set_zone("10.0.0.2", "a");
    h.link.set_zone("10.0.0.3", "b");
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    let e = h.download(&id, "10.0.0.3").await;
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_ZONE_REFUSED));
    assert!(
        e.error_msg
            .contains("zone \"b\", isolated from the source's zone \"a\""),
        "{}",
        e.error_msg
    );
    let starts = h.link.starts().await;
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].0, key("10.0.0.2"));
}

#[tokio::test]
async fn f8_a_zone_chain_relay_carries_the_files_into_its_zone() {
    let h = harness().await;
    for (ip, zone) in [
        ("10.0.0.1", "a"),
        ("10.0.0.2", "a"),
        ("10.0.0.3", "b"),
        ("10.0.0.4", "b"),
        ("10.0.0.5", "b"),
    ] {
        h.link.set_zone(ip, zone);
    }
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3", "0:10.0.0.4"]);
    s.zone_chain = vec![ZoneHop {
        zone: "b".into(),
        relays: vec![agent("0:10.0.0.5")],
    }];
    let id = h.start(s).await;
    h.manifest("10.0.0.1", &id, 0).await;
    let starts: HashMap<AgentKey, FileStart> = h.link.starts().await.into_iter().collect();
    assert_eq!(starts.len(), 4);
    let relay = &starts[&key("10.0.0.5")];
    assert_eq!(relay.role, FileRole::RoleRelay as i32);
    assert_eq!((relay.target_dir.as_str(), relay.permission), ("", 0));
    assert!(relay.peers[0].is_source);
    let b: Vec<&str> = starts[&key("10.0.0.3")]
        .peers
        .iter()
        .map(|p| p.agent.as_str())
        .collect();
    assert_eq!(
        b,
        ["0:10.0.0.5", "0:10.0.0.4"],
        "zone b: the relay first, never the source"
    );
    assert_eq!(
        h.results(&id).await.len(),
        4,
        "relays are no result entries"
    );

    // Relay reports are logged, not entries.
    h.progress(
        "10.0.0.5",
        &id,
        ProgressSide::SideDownload,
        FileState::FileFailed,
        FileProgress::default(),
    )
    .await;
    assert!(
        h.results(&id)
            .await
            .iter()
            .all(|e| e.error_code == ERR_RUNNING)
    );
}

#[tokio::test]
async fn f9_a_pass_through_lets_the_zone_fetch_from_the_source() {
    let mut config = FileConfig::default();
    config.pass_through.push(PassThroughRule {
        from_zone: "a".into(),
        to_zone: "b".into(),
        apps: vec![],
    });
    let h = harness_with(config).await;
    h.link.set_zone("10.0.0.1", "a");
    h.link.set_zone("10.0.0.3", "b");
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.3"]);
    s.pass_through = vec![ZonePair {
        from_zone: "a".into(),
        to_zone: "b".into(),
    }];
    let id = h.start(s).await;
    h.manifest("10.0.0.1", &id, 0).await;
    let starts = h.link.starts().await;
    assert_eq!(starts.len(), 1);
    assert!(starts[0].1.peers[0].is_source);
}

#[tokio::test]
async fn a_119_when_the_manifest_does_not_fit_one_frame() {
    let h = harness().await;
    *h.link.max_frame.lock() = 200;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    for e in h.results(&id).await {
        assert_eq!(e.error_code, ERR_TOO_LARGE, "{e:?}");
        assert!(
            e.error_msg.contains("link.max_frame_bytes"),
            "{}",
            e.error_msg
        );
    }
    assert!(h.link.starts().await.is_empty());
}

#[tokio::test]
async fn a_target_gone_before_its_file_start_fails_with_117() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.link.disconnect("10.0.0.3");
    h.manifest("10.0.0.1", &id, 0).await;
    let e = h.download(&id, "10.0.0.3").await;
    assert_eq!(e.error_code, ERR_AGENT_DOWN);
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_RUNNING);
}

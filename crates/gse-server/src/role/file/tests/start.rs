//! Starting a transfer: every entry listed at once, unusable agents final
//! with their reason, the source asked for its manifest, pass-throughs
//! checked against the config.

use super::*;
use crate::role::file::codes::*;
use crate::role::file::spec::{BYTES_PER_MB, ZonePair};
use crate::role::file::{FileError, PassThroughRule};
use gse_proto::link::SelectionKind;

#[tokio::test]
async fn every_entry_is_listed_at_once_with_unusable_agents_final() {
    let h = harness().await;
    let mut s = spec(
        "0:10.0.0.1",
        &[
            "0:10.0.0.2",
            "0:10.0.0.3",
            "0:10.9.9.9",
            "0:10.0.0.9",
            "0:10.0.0.10",
        ],
    );
    s.upload_speed = 2;
    let id = h.start(s).await;
    assert!(id.starts_with("GSETASK:F:"), "{id}");
    let all = h.results(&id).await;
    assert_eq!(all.len(), 6, "one upload and one download per target");
    let up = &all[0];
    assert_eq!(
        (up.mode, up.status, up.error_code),
        (0, STATUS_RUNNING, ERR_RUNNING)
    );
    assert_eq!(
        (
            up.source_agent_id.as_str(),
            up.source_file_dir.as_str(),
            up.source_file_name.as_str()
        ),
        ("0:10.0.0.1", "/data", "a.txt")
    );
    for e in &all[1..3] {
        assert_eq!(
            (e.mode, e.status, e.error_code),
            (1, STATUS_WAITING, ERR_RUNNING),
            "{e:?}"
        );
        assert_eq!(
            (e.dest_file_dir.as_str(), e.dest_file_name.as_str()),
            ("/tmp/dst", "a.txt")
        );
        assert_eq!(e.source_agent_id, "0:10.0.0.1");
    }
    let msgs: Vec<(i32, i32, &str)> = all[3..]
        .iter()
        .map(|e| (e.status, e.error_code, e.error_msg.as_str()))
        .collect();
    assert_eq!(msgs[0].1, ERR_AGENT_DOWN);
    assert!(
        msgs[0].2.contains("0:10.9.9.9 is unknown to gse"),
        "{msgs:?}"
    );
    assert_eq!((msgs[1].0, msgs[1].1), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert!(msgs[1].2.contains("offline"), "{msgs:?}");
    assert!(msgs[2].2.contains("held by node n2"), "{msgs:?}");

    let reqs = h.link.manifest_requests().await;
    assert_eq!(reqs.len(), 1);
    let (to, req) = &reqs[0];
    assert_eq!(*to, key("10.0.0.1"));
    assert_eq!(req.transfer_id, id);
    assert_eq!(req.selection, SelectionKind::SelectionFile as i32);
    assert_eq!(
        (req.source_dir.as_str(), req.pattern.as_str()),
        ("/data", "a.txt")
    );
    assert_eq!(req.upload_bytes_per_s, 2 * BYTES_PER_MB);
    assert_eq!(req.token.len(), 16);
    assert!(
        req.timeout_ms > 3_500_000 && req.timeout_ms <= 3_600_000,
        "{}",
        req.timeout_ms
    );
}

#[tokio::test]
async fn an_unusable_source_fails_its_upload_and_every_download_with_117() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.9", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    for e in h.results(&id).await {
        assert_eq!(
            (e.status, e.error_code),
            (STATUS_FAILED, ERR_AGENT_DOWN),
            "{e:?}"
        );
        assert!(e.end_ms > 0);
    }
    assert!(h.link.sent.lock().is_empty(), "nothing is sent");
    assert_eq!(h.svc.counts(), (1, 0), "the transfer is finished");
}

#[tokio::test]
async fn a_task_without_a_usable_target_ends_without_asking_its_source() {
    let h = harness().await;
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.9"])).await;
    let up = h.upload(&id).await;
    assert_eq!(up.error_code, ERR_TRANSFER_FAILED);
    assert!(
        up.error_msg.contains("nothing was sent"),
        "{}",
        up.error_msg
    );
    assert!(h.link.manifest_requests().await.is_empty());
}

#[tokio::test]
async fn containers_are_not_supported_yet() {
    let h = harness().await;
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]);
    s.tasks[0].targets[1].bk_container_id = "docker://abc".into();
    let id = h.start(s).await;
    let e = h.download(&id, "10.0.0.3").await;
    assert_eq!(e.error_code, ERR_TRANSFER_FAILED);
    assert!(
        e.error_msg.contains("containers are not supported"),
        "{}",
        e.error_msg
    );
    assert_eq!(e.dest_container_id, "docker://abc");
}

#[tokio::test]
async fn a_source_whose_link_is_full_fails_its_task() {
    let h = harness().await;
    h.link.refuse.lock().insert(key("10.0.0.1"));
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    for e in h.results(&id).await {
        assert_eq!(e.error_code, ERR_AGENT_DOWN, "{e:?}");
    }
}

#[tokio::test]
async fn f9_pass_through_must_be_configured_for_the_app() {
    let mut config = FileConfig::default();
    config.pass_through.push(PassThroughRule {
        from_zone: "a".into(),
        to_zone: "b".into(),
        apps: vec!["bk_job".into()],
    });
    let h = harness_with(config).await;
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2"]);
    s.pass_through = vec![ZonePair {
        from_zone: "a".into(),
        to_zone: "b".into(),
    }];
    assert!(h.svc.start_transfer(s.clone(), "bk_job").await.is_ok());
    let err = h
        .svc
        .start_transfer(s.clone(), "other_app")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        FileError::PassThroughRefused { index: 0, .. }
    ));
    let text = err.to_string();
    assert!(
        text.contains("\"a\"") && text.contains("\"b\"") && text.contains("[[file.pass_through]]"),
        "{text}"
    );
    s.pass_through[0].to_zone = "c".into();
    assert!(h.svc.start_transfer(s, "bk_job").await.is_err());
}

#[tokio::test]
async fn tree_and_wildcard_tasks_ask_for_their_selection() {
    let h = harness().await;
    let mut s = spec("0:10.0.0.1", &["0:10.0.0.2"]);
    s.tasks[0].source.kind = FileKind::Dir;
    s.tasks[0].source.store_dir = "/data/pkg/".into();
    s.tasks[0].source.file_name = String::new();
    let mut wild = task("0:10.0.0.1", &["0:10.0.0.2"]);
    wild.source.kind = FileKind::Wildcard;
    wild.source.file_name = "*.log".into();
    s.tasks.push(wild);
    let id = h.start(s).await;
    let reqs = h.link.manifest_requests().await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].1.selection, SelectionKind::SelectionTree as i32);
    assert_eq!(reqs[0].1.source_dir, "/data/pkg/");
    assert_eq!(
        (reqs[1].1.task_index, reqs[1].1.selection),
        (1, SelectionKind::SelectionWildcard as i32)
    );
    assert_eq!(reqs[1].1.pattern, "*.log");
    let all = h.results(&id).await;
    assert_eq!(all.len(), 4);
    assert_eq!(
        (all[2].mode, all[2].task_index),
        (0, 1),
        "task 1's upload follows task 0's entries"
    );
    assert_eq!(all[0].source_file_name, "", "names are echoed as sent");
}

//! K2 hand-overs: a manifest request or `FileStart` sent while its agent
//! was moving to another node never reached it, so it waits for the
//! agent's next claim and goes there (or fails as offline if the agent
//! registers nowhere in time); what an agent took up is lost with its
//! claim as on any disconnect.

use std::time::Duration;

use gse_core::seams::AgentDirectory;

use super::*;
use crate::role::file::codes::*;
use crate::role::task::tests::held;

/// A `FileProgress` saying the download at `ip` runs.
async fn downloading(h: &Harness, ip: &str, id: &str) {
    let p = FileProgress {
        done_bytes: 10,
        total_bytes: 100,
        ..FileProgress::default()
    };
    h.progress(
        ip,
        id,
        ProgressSide::SideDownload,
        FileState::FileRunning,
        p,
    )
    .await;
}

#[tokio::test]
async fn a_target_moving_as_its_file_start_goes_gets_it_on_its_new_claim() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.2"));
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    let starts = h.link.starts().await;
    assert_eq!(
        starts.iter().map(|s| s.0).collect::<Vec<_>>(),
        [key("10.0.0.3")],
        "the moving agent was not reached"
    );
    let waiting = h.download(&id, "10.0.0.2").await;
    assert_eq!(
        (waiting.status, waiting.error_code),
        (STATUS_WAITING, ERR_RUNNING),
        "waits for the agent instead of failing: {waiting:?}"
    );
    assert!(
        waiting.status_info.contains("moving to another node"),
        "{waiting:?}"
    );
    // Not registered anywhere yet: still waiting.
    h.svc.resend_moved().await;
    assert!(h.link.starts().await.is_empty());

    // It registered again: the next round sends its FileStart, once, with
    // the task's entries and its peers.
    h.link.claim(key("10.0.0.2"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    h.svc.resend_moved().await;
    let starts = h.link.starts().await;
    assert_eq!(starts.len(), 1, "{starts:?}");
    let (to, start) = &starts[0];
    assert_eq!(*to, key("10.0.0.2"));
    assert_eq!(start.transfer_id, id);
    assert_eq!(start.entries, entries());
    assert_eq!(start.target_dir, "/tmp/dst");
    assert!(
        start.peers.iter().any(|p| p.agent == "0:10.0.0.1"),
        "the source is its peer: {:?}",
        start.peers
    );
    h.done("10.0.0.2", &id).await;
    assert_eq!(h.download(&id, "10.0.0.2").await.status, STATUS_SUCCESS);
    // Sent under the new claim: the old one ending closes nothing.
    h.svc.on_disconnect(key("10.0.0.2"), held(FIRST_CONN));
    assert_eq!(h.download(&id, "10.0.0.2").await.status, STATUS_SUCCESS);
}

#[tokio::test]
async fn a_source_moving_as_its_manifest_is_asked_for_is_asked_on_its_new_claim() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.1"));
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    assert!(h.link.manifest_requests().await.is_empty());
    let up = h.upload(&id).await;
    assert_eq!(up.error_code, ERR_RUNNING, "{up:?}");
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_RUNNING);

    h.link.claim(key("10.0.0.1"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    let asked = h.link.manifest_requests().await;
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, key("10.0.0.1"));
    assert_eq!(asked[0].1.transfer_id, id);
    // The transfer goes on as usual.
    h.manifest("10.0.0.1", &id, 0).await;
    assert_eq!(h.link.starts().await.len(), 1);
    h.done("10.0.0.2", &id).await;
    assert_eq!(h.upload(&id).await.status, STATUS_SUCCESS);
}

#[tokio::test]
async fn a_file_start_the_left_node_refused_follows_but_one_taken_up_is_lost() {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    assert_eq!(h.link.starts().await.len(), 2);
    // 10.0.0.3 took its FileStart up (it reported) before its link was
    // handed over; 10.0.0.2 never got it (the sealed link refused it).
    downloading(&h, "10.0.0.3", &id).await;
    for ip in ["10.0.0.2", "10.0.0.3"] {
        h.svc.on_moving(key(ip), held(FIRST_CONN));
        // Said twice (the sealed link ends, the frame on its way is
        // refused): the request follows once.
        h.svc.on_moving(key(ip), held(FIRST_CONN));
    }
    let lost = h.download(&id, "10.0.0.3").await;
    assert_eq!(
        (lost.status, lost.error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN),
        "{lost:?}"
    );
    let follows = h.download(&id, "10.0.0.2").await;
    assert_eq!(follows.error_code, ERR_RUNNING, "{follows:?}");
    assert_eq!(h.svc.moving.len(), 1);

    h.link.claim(key("10.0.0.2"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    let starts = h.link.starts().await;
    assert_eq!(
        starts.iter().map(|s| s.0).collect::<Vec<_>>(),
        [key("10.0.0.2")]
    );
    assert_eq!(starts[0].1.transfer_id, id);
}

#[tokio::test(start_paused = true)]
async fn a_moving_agent_that_registers_nowhere_in_time_fails_as_offline() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.2"));
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    h.manifest("10.0.0.1", &id, 0).await;
    tokio::time::advance(super::super::moving::FOLLOW_WITHIN + Duration::from_secs(1)).await;
    h.svc.resend_moved().await;
    let e = h.download(&id, "10.0.0.2").await;
    assert_eq!(
        (e.status, e.error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN),
        "{e:?}"
    );
    assert!(
        e.error_msg.contains(
            "agent 0:10.0.0.2 was moving to another node and did not register there within 30s"
        ),
        "{}",
        e.error_msg
    );
    assert!(h.link.starts().await.is_empty());
}

#[tokio::test]
async fn a_transfer_ended_meanwhile_sends_nothing_to_the_agent_that_comes_back() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.2"));
    let id = h.start(spec("0:10.0.0.1", &["0:10.0.0.2"])).await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.svc.terminate(&id, None).await.unwrap();
    h.link.claim(key("10.0.0.2"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    assert!(h.link.starts().await.is_empty());
    assert_eq!(h.download(&id, "10.0.0.2").await.error_code, ERR_TERMINATED);
}

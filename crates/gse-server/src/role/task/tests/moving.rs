//! K2 hand-overs: a task sent while its agent was moving to another node
//! never reached it, so it waits for the agent's next claim and goes there
//! (or fails as offline if the agent registers nowhere in time).

use super::remote::Forwarder;
use super::*;
use gse_core::seams::AgentDirectory;

fn run_scripts_to(link: &FakeLink, ip: &str) -> usize {
    link.sent
        .lock()
        .iter()
        .filter(|(k, f)| *k == key(ip) && f.msg_type == MsgType::RunScript)
        .count()
}

#[tokio::test]
async fn a_task_sent_while_its_agent_moves_goes_to_the_agent_once_it_registered_again() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.2"));
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["echo hi"]))
        .await
        .unwrap();
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        codes(&entries),
        [
            ("0:10.0.0.1".into(), STATUS_DISPATCHED, ERR_RUNNING),
            ("0:10.0.0.2".into(), STATUS_DISPATCHED, ERR_RUNNING),
        ],
        "the moving agent's entry waits instead of failing"
    );
    assert_eq!(run_scripts_to(&h.link, "10.0.0.2"), 0);
    // Not registered anywhere yet: still waiting.
    h.svc.resend_moved().await;
    assert_eq!(run_scripts_to(&h.link, "10.0.0.2"), 0);

    // It registered again (here: a newer claim); the next round sends it.
    h.link.claim(key("10.0.0.2"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    assert_eq!(run_scripts_to(&h.link, "10.0.0.2"), 1);
    run_ok(&h.svc, "10.0.0.2", &task_id, 0, "hi\n");
    let e = &poll_all(&h.svc, &task_id).await[1];
    assert_eq!(
        (e.status, e.error_code),
        (STATUS_SUCCESS, ERR_NONE),
        "{e:?}"
    );
    // Sent under the new claim: the old one ending closes nothing.
    h.svc.on_disconnect(key("10.0.0.2"), held(FIRST_CONN));
    assert_eq!(poll_all(&h.svc, &task_id).await[1].status, STATUS_SUCCESS);
}

#[tokio::test]
async fn a_task_another_node_refused_because_the_agent_moves_follows_it() {
    let h = harness().await;
    let fwd = Arc::new(Forwarder::default());
    h.svc.sender.set_forwarder(fwd.clone());
    // 10.0.0.4 is held by node "n2" (claim 1,000,000 in the fake).
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.4"], &["echo hi"]))
        .await
        .unwrap();
    assert_eq!(fwd.sent.lock().len(), 1);
    let moved_from = h
        .svc
        .sender
        .current(key("10.0.0.4"))
        .await
        .unwrap()
        .expect("held by n2");
    // n2 says the agent's link there was handed over: once as the sealed
    // link ends, once more as it refuses the frame that was on its way.
    h.svc.on_moving(key("10.0.0.4"), moved_from);
    h.svc.on_moving(key("10.0.0.4"), moved_from);
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!(e.status, STATUS_DISPATCHED, "{e:?}");
    // The agent registers on this node.
    h.link.claim(key("10.0.0.4"), NODE, &[]).await.unwrap();
    h.svc.resend_moved().await;
    h.svc.resend_moved().await;
    assert_eq!(run_scripts_to(&h.link, "10.0.0.4"), 1, "sent once");
    run_ok(&h.svc, "10.0.0.4", &task_id, 0, "hi\n");
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!(
        (e.status, e.error_code),
        (STATUS_SUCCESS, ERR_NONE),
        "{e:?}"
    );
}

#[tokio::test]
async fn work_the_agent_took_up_before_it_left_is_lost_with_the_claim() {
    let h = harness().await;
    let fwd = Arc::new(Forwarder::default());
    h.svc.sender.set_forwarder(fwd.clone());
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.4"], &["sleep 9"]))
        .await
        .unwrap();
    h.svc.on_frame(
        key("10.0.0.4"),
        status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    let moved_from = h
        .svc
        .sender
        .current(key("10.0.0.4"))
        .await
        .unwrap()
        .unwrap();
    h.svc.on_moving(key("10.0.0.4"), moved_from);
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!(
        (e.status, e.error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_registers_nowhere_in_time_fails_its_target_as_offline() {
    let h = harness().await;
    h.link.moving.lock().insert(key("10.0.0.2"));
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["echo hi"]))
        .await
        .unwrap();
    tokio::time::advance(super::super::moving::FOLLOW_WITHIN + Duration::from_secs(1)).await;
    h.svc.resend_moved().await;
    let e = &poll_all(&h.svc, &task_id).await[0];
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
    assert_eq!(run_scripts_to(&h.link, "10.0.0.2"), 0);
}

//! Agents held by another node: their frames go through the sender's node
//! link (never "not here, so terminated"), and a node that cannot be
//! reached is a per-host error naming it.

use super::*;
use crate::cluster::sender::{NodeForwarder, SendError};
use parking_lot::Mutex;

/// A node link that records what it forwards, and refuses node "down".
#[derive(Default)]
pub(super) struct Forwarder {
    pub(super) sent: Mutex<Vec<(String, AgentKey, MsgType)>>,
}

#[async_trait::async_trait]
impl NodeForwarder for Forwarder {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        _epoch: u64,
        frame: Frame,
    ) -> Result<(), SendError> {
        if node_id == "down" {
            return Err(SendError::RemoteUnreachable {
                agent,
                node: node_id.into(),
                reason: "connection refused".into(),
            });
        }
        self.sent
            .lock()
            .push((node_id.into(), agent, frame.msg_type));
        Ok(())
    }
}

#[tokio::test]
async fn an_agent_of_another_node_is_run_and_cancelled_there() {
    let h = harness().await;
    let fwd = Arc::new(Forwarder::default());
    h.svc.sender.set_forwarder(fwd.clone());
    // 10.0.0.4 is held by node "n2".
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.4"], &["sleep 9"]))
        .await
        .unwrap();
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(entries[1].status, STATUS_DISPATCHED, "{:?}", entries[1]);
    h.svc.terminate(&task_id, None).await.unwrap();
    assert_eq!(
        *fwd.sent.lock(),
        [
            ("n2".to_string(), key("10.0.0.4"), MsgType::RunScript),
            ("n2".to_string(), key("10.0.0.4"), MsgType::CancelTask),
        ]
    );
    // Asked to stop, not closed here: the agent reports 126 itself.
    let e = &poll_all(&h.svc, &task_id).await[1];
    assert_eq!(e.status, STATUS_DISPATCHED, "{e:?}");
    assert_eq!(h.link.cancels_to("10.0.0.1"), 1);
}

#[tokio::test]
async fn a_node_that_cannot_be_reached_is_a_per_host_error() {
    let h = harness().await;
    h.svc.sender.set_forwarder(Arc::new(Forwarder::default()));
    h.link.remote.lock().insert(key("10.0.0.4"), "down".into());
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.4"], &["sleep 9"]))
        .await
        .unwrap();
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(entries[0].status, STATUS_DISPATCHED);
    let e = &entries[1];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert_eq!(
        e.error_msg,
        "agent 0:10.0.0.4 is held by node down, which this node cannot reach: connection refused"
    );
}

#[tokio::test]
async fn terminating_on_a_node_gone_out_of_reach_says_the_task_may_still_run() {
    let h = harness().await;
    h.svc.sender.set_forwarder(Arc::new(Forwarder::default()));
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.4"], &["sleep 9"]))
        .await
        .unwrap();
    // Its node becomes unreachable (the directory now names "down").
    h.link.remote.lock().insert(key("10.0.0.4"), "down".into());
    h.svc.terminate(&task_id, None).await.unwrap();
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert!(
        e.error_msg
            .starts_with("terminate requested, but agent 0:10.0.0.4 is held by node down")
            && e.error_msg.ends_with("the task may still run there"),
        "{}",
        e.error_msg
    );
}

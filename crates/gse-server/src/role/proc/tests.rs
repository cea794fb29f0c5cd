//! Unit tests of the proc role over the real embedded store and the task
//! role's fake link: queueing (1000115), dispatch (117 for unknown and
//! offline agents), answers, disconnects and the status cache. Real agents
//! are exercised by gse-testkit's `d_plugins`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::StateStore;
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::{ProcOperate, ProcOperateResult, ProcSpec, ProcStatus, ProcStatusReport};
use gse_proto::{Frame, MsgType};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::role::link::AgentFrames;
use crate::role::task::tests::{FakeLink, agent_record, key};
use crate::store::EmbeddedStore;

struct Harness {
    svc: Arc<ProcService>,
    link: Arc<FakeLink>,
    store: Arc<dyn StateStore>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state.db")).unwrap());
    let link = Arc::new(FakeLink::default());
    let svc = ProcService::new(ProcParts {
        node_id: "n1".into(),
        config: ProcConfig {
            dispatch_interval: Duration::from_millis(20),
            ..ProcConfig::default()
        },
        store: store.clone(),
        sender: link.sender(),
        alarms: None,
        danger: Arc::new(gse_core::danger::DangerPolicy::builtin()),
    });
    Harness {
        svc,
        link,
        store,
        _dir: dir,
    }
}

fn op(op_type: u32, agents: &[&str]) -> OpRequest {
    OpRequest {
        namespace: "nodeman".into(),
        name: "beat".into(),
        labels: BTreeMap::new(),
        op_type,
        targets: agents
            .iter()
            .map(|a| (a.to_string(), AgentRef::parse(a).unwrap()))
            .collect(),
        spec: ProcSpec {
            proc_name: "beat".into(),
            ..Default::default()
        },
    }
}

async fn online(h: &Harness, ip: &str) {
    h.store
        .upsert_agent(agent_record(ip, "n1", true))
        .await
        .unwrap();
    h.link.connected.lock().insert(key(ip));
}

#[tokio::test]
async fn queued_then_running_then_answered() {
    let h = harness().await;
    online(&h, "10.0.0.1").await;
    let id = h.svc.operate(vec![op(0, &["0:10.0.0.1"])]);
    let r = h.svc.results(&id).unwrap();
    assert!(r.queued, "nothing dispatched yet");
    assert_eq!(r.answers["0:10.0.0.1:nodeman:beat"].error_code, 115);

    let stop = CancellationToken::new();
    tokio::spawn(h.svc.clone().run(stop.clone()));
    wait_until(|| !h.link.sent.lock().is_empty()).await;
    let r = h.svc.results(&id).unwrap();
    assert!(!r.queued);
    assert_eq!(r.answers["0:10.0.0.1:nodeman:beat"].error_code, 115);

    let (to, frame) = h.link.sent.lock()[0].clone();
    assert_eq!(to, key("10.0.0.1"));
    assert_eq!(frame.msg_type, MsgType::ProcOperate);
    let sent: ProcOperate = frame.decode().unwrap();
    assert_eq!((sent.task_id.as_str(), sent.op_type), (id.as_str(), 0));

    let answer = ProcOperateResult {
        task_id: id.clone(),
        index: sent.index,
        error_code: 0,
        error_msg: "success".into(),
        content: "{}".into(),
        status: Some(ProcStatus {
            namespace: "nodeman".into(),
            name: "beat".into(),
            status: 1,
            is_auto: true,
            ..Default::default()
        }),
    };
    // A stranger's answer is ignored; the agent's counts.
    h.svc.on_frame(
        key("10.0.0.9"),
        Frame::new(MsgType::ProcOperateResult, 0, &answer),
    );
    assert_eq!(
        h.svc.results(&id).unwrap().answers["0:10.0.0.1:nodeman:beat"].error_code,
        115
    );
    h.svc.on_frame(
        key("10.0.0.1"),
        Frame::new(MsgType::ProcOperateResult, 0, &answer),
    );
    assert_eq!(
        h.svc.results(&id).unwrap().answers["0:10.0.0.1:nodeman:beat"].error_code,
        0
    );

    let views = h
        .svc
        .status(
            "nodeman",
            "beat",
            &[("0:10.0.0.1".into(), AgentRef::parse("0:10.0.0.1").unwrap())],
        )
        .await
        .unwrap();
    assert_eq!(
        (views[0].status, views[0].isauto, views[0].ip.as_str()),
        (1, true, "10.0.0.1")
    );
    stop.cancel();
}

#[tokio::test]
async fn unknown_and_offline_agents_answer_117_and_bad_ops_832() {
    let h = harness().await;
    h.store
        .upsert_agent(agent_record("10.0.0.2", "n1", false))
        .await
        .unwrap();
    let id = h.svc.operate(vec![
        op(0, &["0:10.0.0.5", "0:10.0.0.2"]),
        OpRequest {
            name: "other".into(),
            ..op(6, &["0:10.0.0.5"])
        },
    ]);
    let stop = CancellationToken::new();
    tokio::spawn(h.svc.clone().run(stop.clone()));
    wait_until(|| !h.svc.results(&id).unwrap().queued).await;
    let a = h.svc.results(&id).unwrap().answers;
    assert_eq!(a["0:10.0.0.5:nodeman:beat"].error_code, 117);
    assert!(a["0:10.0.0.5:nodeman:beat"].error_msg.contains("unknown"));
    assert_eq!(a["0:10.0.0.2:nodeman:beat"].error_code, 117);
    assert_eq!(a["0:10.0.0.5:nodeman:other"].error_code, 832);
    assert!(h.link.sent.lock().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn a_lost_agent_fails_its_open_entries_with_117() {
    let h = harness().await;
    online(&h, "10.0.0.1").await;
    let id = h.svc.operate(vec![op(1, &["0:10.0.0.1"])]);
    let stop = CancellationToken::new();
    tokio::spawn(h.svc.clone().run(stop.clone()));
    wait_until(|| !h.link.sent.lock().is_empty()).await;
    // Another connection of the same agent ending changes nothing.
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(99));
    assert_eq!(
        h.svc.results(&id).unwrap().answers["0:10.0.0.1:nodeman:beat"].error_code,
        115
    );
    h.svc.on_disconnect(
        key("10.0.0.1"),
        crate::role::task::tests::held(crate::role::task::tests::FIRST_CONN),
    );
    assert_eq!(
        h.svc.results(&id).unwrap().answers["0:10.0.0.1:nodeman:beat"].error_code,
        117
    );
    assert_eq!(h.svc.jobs.counts().1, 0, "no task has open entries");
    stop.cancel();
}

#[tokio::test]
async fn status_reports_fill_the_cache_and_unknown_tasks_are_not_found() {
    let h = harness().await;
    online(&h, "10.0.0.1").await;
    let report = ProcStatusReport {
        full: true,
        procs: vec![ProcStatus {
            namespace: "nodeman".into(),
            name: "beat".into(),
            status: 2,
            version: "1.0".into(),
            ..Default::default()
        }],
    };
    h.svc.on_frame(
        key("10.0.0.1"),
        Frame::new(MsgType::ProcStatusReport, 0, &report),
    );
    let agents = [(
        "0:10.0.0.1".to_string(),
        AgentRef::parse("0:10.0.0.1").unwrap(),
    )];
    let v = h.svc.status("nodeman", "beat", &agents).await.unwrap();
    assert_eq!((v[0].status, v[0].version.as_str()), (2, "1.0"));
    assert!(matches!(h.svc.results("nope"), Err(ProcError::NotFound(_))));
}

/// Polls `cond` for up to 5 s.
async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5s");
}

#[tokio::test]
async fn r9_6_a_blocked_control_command_is_refused_and_never_sent() {
    let h = harness().await;
    online(&h, "10.0.0.1").await;
    let mut blocked = op(1, &["0:10.0.0.1"]);
    blocked.spec.start_cmd = "./start.sh beat".into();
    blocked.spec.reload_cmd = "sudo bash -c 'rm -rf /'".into();
    let mut fine = op(0, &["0:10.0.0.1"]);
    fine.name = "other".into();
    fine.spec.start_cmd = "./start.sh other".into();
    let id = h.svc.operate(vec![blocked, fine]);
    let stop = CancellationToken::new();
    tokio::spawn(h.svc.clone().run(stop.clone()));
    wait_until(|| !h.link.sent.lock().is_empty()).await;
    let r = h.svc.results(&id).unwrap();
    let refused = &r.answers["0:10.0.0.1:nodeman:beat"];
    assert_eq!(refused.error_code, CODE_FAILED, "{refused:?}");
    for part in ["rm_root", "spec.control.reload_cmd"] {
        assert!(refused.error_msg.contains(part), "{refused:?}");
    }
    assert_eq!(r.answers["0:10.0.0.1:nodeman:other"].error_code, 115);
    // Only the other operation went to the agent.
    let sent = h.link.sent.lock().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.decode::<ProcOperate>().unwrap().name, "other");
    stop.cancel();
}

/// A node link that forwards to "n2" and cannot reach "down".
struct Forwarder(Mutex<Vec<(String, AgentKey)>>);

#[async_trait::async_trait]
impl crate::cluster::sender::NodeForwarder for Forwarder {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        _epoch: u64,
        _frame: Frame,
    ) -> Result<(), crate::cluster::sender::SendError> {
        if node_id == "down" {
            return Err(crate::cluster::sender::SendError::RemoteUnreachable {
                agent,
                node: node_id.into(),
                reason: "connection refused".into(),
            });
        }
        self.0.lock().push((node_id.into(), agent));
        Ok(())
    }
}

#[tokio::test]
async fn operations_on_other_nodes_agents_go_there_or_fail_naming_the_node() {
    let h = harness().await;
    let fwd = Arc::new(Forwarder(Mutex::new(Vec::new())));
    h.svc.sender.set_forwarder(fwd.clone());
    for (ip, node) in [("10.0.0.4", "n2"), ("10.0.0.5", "down")] {
        h.store
            .upsert_agent(agent_record(ip, node, true))
            .await
            .unwrap();
        h.link.remote.lock().insert(key(ip), node.into());
    }
    let id = h.svc.operate(vec![op(0, &["0:10.0.0.4", "0:10.0.0.5"])]);
    for task in h.svc.jobs.take_queue() {
        h.svc.dispatch_task(&task).await.unwrap();
    }
    assert_eq!(*fwd.0.lock(), [("n2".to_string(), key("10.0.0.4"))]);
    let r = h.svc.results(&id).unwrap();
    assert_eq!(r.answers["0:10.0.0.4:nodeman:beat"].error_code, 115);
    let far = &r.answers["0:10.0.0.5:nodeman:beat"];
    assert_eq!(far.error_code, CODE_AGENT_ABNORMAL);
    assert!(
        far.error_msg
            .contains("agent 0:10.0.0.5 is held by node down, which this node cannot reach"),
        "{}",
        far.error_msg
    );
}

/// K2: an operation sent while its agent moves to another node never
/// reached it; it goes once the agent registered again, and is not failed
/// by the move (here, and when the node it left says so).
#[tokio::test]
async fn an_operation_sent_while_its_agent_moves_follows_it() {
    use gse_core::seams::AgentDirectory;
    let h = harness().await;
    online(&h, "10.0.0.1").await;
    h.link.moving.lock().insert(key("10.0.0.1"));
    let id = h.svc.operate(vec![op(1, &["0:10.0.0.1"])]);
    let stop = CancellationToken::new();
    tokio::spawn(h.svc.clone().run(stop.clone()));
    wait_until(|| !h.svc.moving.is_empty()).await;
    let pending =
        |h: &Harness| h.svc.results(&id).unwrap().answers["0:10.0.0.1:nodeman:beat"].error_code;
    assert_eq!(pending(&h), 115, "waits for the agent");
    assert!(h.link.sent.lock().is_empty());
    // The move ends the old claim: nothing sent there is failed by it.
    h.svc.on_moving(
        key("10.0.0.1"),
        crate::role::task::tests::held(crate::role::task::tests::FIRST_CONN),
    );
    assert_eq!(pending(&h), 115);
    // It registers again: the operation goes to the new claim, once.
    h.link.claim(key("10.0.0.1"), "n1", &[]).await.unwrap();
    wait_until(|| !h.link.sent.lock().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.link.sent.lock().len(), 1);
    assert_eq!(pending(&h), 115, "sent, not answered yet");
    stop.cancel();
}

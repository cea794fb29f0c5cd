//! The supervisor's state machine against real short-lived processes: a
//! plugin made of shell scripts that writes its pid file, started,
//! stopped, killed, restarted, given up on, and re-adopted from the state
//! file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gse_proto::link::ProcSpec;

use super::process;
use super::spec::*;
use super::state_file;
use super::supervisor::PluginState;

/// A plugin in `dir`: `start.sh` backgrounds a `sleep` and writes its pid.
fn plugin(dir: &Path, start: &str) -> PluginState {
    std::fs::write(dir.join("start.sh"), start).unwrap();
    std::fs::write(dir.join("stop.sh"), "kill $(cat plugin.pid)\n").unwrap();
    let wire = ProcSpec {
        proc_name: "sleeper".into(),
        setup_path: dir.display().to_string(),
        pid_path: dir.join("plugin.pid").display().to_string(),
        start_cmd: "sh ./start.sh".into(),
        stop_cmd: "sh ./stop.sh".into(),
        version_cmd: "echo 1.2.3".into(),
        start_check_secs: 1,
        stop_check_secs: 3,
        start_retries: 2,
        start_interval_secs: 1,
        op_timeout_secs: 10,
        auto_type: 1,
        ..Default::default()
    };
    let id = PluginId {
        namespace: "nodeman".into(),
        name: "sleeper".into(),
    };
    let spec = PluginSpec::from_wire(&wire, BTreeMap::new()).unwrap();
    PluginState::new(id, spec, dir.join("ctl.log"))
}

const GOOD_START: &str = "sleep 600 &\necho $! > plugin.pid\n";

fn kill_now(st: &PluginState) {
    if let Some(p) = st.proc {
        let _ = process::kill(p.pid);
    }
}

#[tokio::test]
async fn start_stop_and_their_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = plugin(dir.path(), GOOD_START);
    let out = st.operate(OpType::Start).await;
    assert_eq!(out.code, CODE_OK, "{}", out.message);
    assert_eq!(st.status(), STATUS_RUNNING);
    assert!(st.hosted);
    assert_eq!(st.version, "1.2.3");
    let pid = st.proc.unwrap().pid;
    assert_eq!(
        process::read_pid_file(&dir.path().join("plugin.pid")),
        Some(pid)
    );

    assert_eq!(st.operate(OpType::Start).await.code, CODE_ALREADY_RUNNING);
    let out = st.operate(OpType::Stop).await;
    assert_eq!(out.code, CODE_OK, "{}", out.message);
    assert_eq!(st.status(), STATUS_STOPPED);
    assert!(!st.hosted);
    assert_eq!(st.operate(OpType::Stop).await.code, CODE_NOT_RUNNING);
}

#[tokio::test]
async fn a_hosted_plugin_that_dies_is_restarted_with_a_new_pid() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = plugin(dir.path(), GOOD_START);
    assert_eq!(st.operate(OpType::Start).await.code, CODE_OK);
    let first = st.proc.unwrap().pid;
    kill_now(&st);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checked = st.check(None, 5).await;
    assert!(checked.restarted);
    assert_eq!(checked.gave_up, None);
    let second = st.proc.expect("restarted").pid;
    assert_ne!(first, second);
    // Not hosted: a death is noticed but nothing restarts it.
    assert_eq!(st.operate(OpType::Undelegate).await.code, CODE_OK);
    kill_now(&st);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checked = st.check(None, 5).await;
    assert!(!checked.restarted);
    assert_eq!(st.status(), STATUS_STOPPED);
}

#[tokio::test]
async fn a_plugin_that_never_starts_is_given_up_after_start_retries() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = plugin(dir.path(), "echo cannot start >&2\nexit 0\n");
    let out = st.operate(OpType::Start).await;
    assert_eq!(out.code, CODE_NOT_ALIVE, "{}", out.message);
    // First retry at once, the next after start_interval (1 s).
    let first = st.check(None, 5).await;
    assert!(first.restarted && first.gave_up.is_none());
    assert_eq!(st.failed_restarts, 1);
    let early = st.check(None, 5).await;
    assert!(!early.restarted, "backoff: too early for another try");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = st.check(None, 5).await;
    let message = last.gave_up.expect("gave up after 2 failures");
    assert!(message.contains("failed to restart 2 times"), "{message}");
    assert!(st.gave_up);
    // Given up: no more tries until an operator delegates it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!st.check(None, 5).await.restarted);
    assert_eq!(st.operate(OpType::Delegate).await.code, CODE_OK);
    assert!(!st.gave_up && st.failed_restarts == 0);
}

#[tokio::test]
async fn state_survives_a_restart_and_the_running_plugin_is_re_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = plugin(dir.path(), GOOD_START);
    assert_eq!(st.operate(OpType::Start).await.code, CODE_OK);
    let pid = st.proc.unwrap().pid;
    let file = dir.path().join("plugins.json");
    state_file::save(&file, &[st.to_saved()]).unwrap();

    let saved = state_file::load(&file).unwrap().remove(0);
    let back = PluginState::restore(saved, dir.path().join("ctl.log"));
    assert_eq!(back.proc.map(|p| p.pid), Some(pid));
    assert!(back.hosted);
    assert_eq!(back.version, "1.2.3");
    kill_now(&back);
}

#[tokio::test]
async fn kill_and_unknown_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = plugin(dir.path(), GOOD_START);
    // No reload_cmd and no restart_cmd: nothing to run.
    let out = st.operate(OpType::Reload).await;
    assert_eq!(out.code, CODE_FAILED);
    assert!(out.message.contains("reload_cmd"), "{}", out.message);
    assert_eq!(st.operate(OpType::Start).await.code, CODE_OK);
    let out = st.operate(OpType::Kill).await;
    assert_eq!(out.code, CODE_OK, "{}", out.message);
    assert_eq!(st.status(), STATUS_STOPPED);
    assert!(!st.hosted);
}

/// A plugin service with no link and nothing supervised, its files in `dir`.
fn bare_service(dir: &Path) -> super::PluginService {
    super::PluginService {
        shared: std::sync::Arc::new(super::Shared {
            cfg: super::PluginConfig::default(),
            data_dir: dir.to_path_buf(),
            state_path: dir.join("plugins.json"),
            plugins: parking_lot::Mutex::new(BTreeMap::new()),
            upstream: parking_lot::Mutex::new(None),
            policy: parking_lot::Mutex::new(std::sync::Arc::new(
                gse_core::danger::DangerPolicy::builtin(),
            )),
            pending_alarms: parking_lot::Mutex::new(Vec::new()),
            save_lock: tokio::sync::Mutex::new(()),
            operating: std::sync::atomic::AtomicUsize::new(0),
        }),
    }
}

/// STATUS of a plugin this agent never ran answers "unregistered" and
/// leaves no entry behind (else it would report "stopped" from then on).
#[test]
fn status_of_an_unknown_plugin_is_unregistered_and_registers_nothing() {
    use gse_proto::link::ProcOperate;

    let dir = tempfile::tempdir().unwrap();
    let svc = bare_service(dir.path());
    let op = ProcOperate {
        task_id: "T".into(),
        namespace: "nodeman".into(),
        name: "never_seen".into(),
        op_type: 2,
        ..Default::default()
    };
    let Err(outcome) = svc.prepare(&op) else {
        panic!("an unknown plugin's STATUS must not be prepared as an operation")
    };
    assert_eq!(outcome.code, 0, "{}", outcome.message);
    assert_eq!(super::unregistered(&op).status, STATUS_UNREGISTERED);
    assert!(svc.shared.plugins.lock().is_empty());
}

/// Two first operations on a plugin the agent does not know yet (nodeman
/// sends several ops per call; each runs on its own task) must land on one
/// state: a second copy would take one op's effect (say, hosting) with it.
#[test]
fn first_ops_on_one_plugin_at_once_share_its_state() {
    use std::sync::{Arc, Barrier};

    use gse_proto::link::ProcOperate;

    let dir = tempfile::tempdir().unwrap();
    let svc = bare_service(dir.path());
    const THREADS: usize = 8;
    for round in 0..100 {
        let op = ProcOperate {
            task_id: "T".into(),
            namespace: "nodeman".into(),
            name: format!("beat{round}"),
            op_type: 3,
            spec: Some(ProcSpec {
                proc_name: "beat".into(),
                setup_path: dir.path().display().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let barrier = Barrier::new(THREADS);
        let got: Vec<Arc<super::Plugin>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        svc.prepare(&op).expect("a valid op").0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in &got[1..] {
            assert!(
                Arc::ptr_eq(&got[0], p),
                "round {round}: concurrent first ops made two states of one plugin"
            );
        }
        assert_eq!(svc.shared.plugins.lock().len(), round + 1);
    }
}

/// An operation whose control command a dangerous-operation rule blocks is
/// answered 65535 naming the rule and the field; nothing runs and the spec
/// is not kept (issue 9 item 6: the agent's own check).
#[tokio::test]
async fn r9_6_a_blocked_control_command_is_refused_before_anything_runs() {
    use gse_core::danger::{DangerAction, DangerPolicy, DangerRuleSpec, builtin_rules};
    use gse_proto::link::{ProcOperate, ProcOperateResult};

    let dir = tempfile::tempdir().unwrap();
    let svc = bare_service(dir.path());
    let mut rules = builtin_rules();
    rules.push(DangerRuleSpec {
        name: "no_marker".into(),
        pattern: r"^touch\s.*marker".into(),
        action: DangerAction::Block,
        description: "test".into(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    svc.attach(tx, std::sync::Arc::new(DangerPolicy::new(&rules).unwrap()));
    let marker = dir.path().join("marker");
    let op = ProcOperate {
        task_id: "T".into(),
        namespace: "nodeman".into(),
        name: "beat".into(),
        op_type: 0,
        spec: Some(ProcSpec {
            proc_name: "beat".into(),
            setup_path: dir.path().display().to_string(),
            start_cmd: format!("true && \"touch\" {}", marker.display()),
            ..Default::default()
        }),
        ..Default::default()
    };
    svc.operate(77, op).await;
    let answer = loop {
        let frame = rx.recv().await.expect("an answer");
        if frame.msg_type == gse_proto::MsgType::ProcOperateResult {
            assert_eq!(frame.stream_id, 77, "answered on the operation's stream");
            break frame.decode::<ProcOperateResult>().unwrap();
        }
    };
    assert_eq!(answer.error_code, CODE_FAILED, "{answer:?}");
    for part in ["no_marker", "spec.control.start_cmd"] {
        assert!(answer.error_msg.contains(part), "{answer:?}");
    }
    assert!(!marker.exists(), "the blocked start_cmd ran");
    assert!(svc.shared.plugins.lock().is_empty(), "the spec was kept");
}

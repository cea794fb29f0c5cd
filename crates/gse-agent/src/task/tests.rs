//! End-to-end tests of the task runner with real processes: frames in the
//! order the server sees them.

use std::path::Path;
use std::time::Duration;

use gse_core::task::*;
use gse_proto::link::{AtomicTask, ScriptFile, TaskOutput, TaskStatus};

use super::*;
use crate::executor::ProcessExecutor;

/// A status or a piece of output, as the server would record it.
#[derive(Debug)]
enum Seen {
    Status(TaskStatus),
    Output(u32, String),
}

fn runner() -> (TaskRunner, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(1024);
    let runner = TaskRunner::new(Arc::new(ProcessExecutor), DangerPolicy::builtin(), tx);
    (runner, rx)
}

fn atomic(id: u32, command: &str, timeout_seconds: u32) -> AtomicTask {
    AtomicTask {
        atomic_id: id,
        command: command.into(),
        timeout_seconds,
    }
}

fn task(task_id: &str, atomics: Vec<AtomicTask>) -> RunScript {
    RunScript {
        task_id: task_id.into(),
        atomic_tasks: atomics,
        ..Default::default()
    }
}

/// Runs `req` to the end and returns its frames, outputs joined per run.
async fn run_to_end(req: RunScript) -> Vec<Seen> {
    let (runner, mut rx) = runner();
    runner.start(9, req);
    runner.wait_idle().await;
    drop(runner);
    collect(&mut rx).await
}

async fn collect(rx: &mut mpsc::Receiver<Frame>) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    while let Some(frame) = rx.recv().await {
        assert_eq!(frame.stream_id, 9);
        match frame.msg_type {
            MsgType::TaskStatus => seen.push(Seen::Status(frame.decode().unwrap())),
            MsgType::TaskOutput => {
                let out: TaskOutput = frame.decode().unwrap();
                let text = String::from_utf8(out.data).expect("output is UTF-8");
                match seen.last_mut() {
                    Some(Seen::Output(id, acc)) if *id == out.atomic_id => acc.push_str(&text),
                    _ => seen.push(Seen::Output(out.atomic_id, text)),
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    seen
}

/// The statuses only, as (atomic_id, status, error_code).
fn codes(seen: &[Seen]) -> Vec<(u32, i32, i32)> {
    statuses(seen)
        .map(|s| (s.atomic_id, s.status, s.error_code))
        .collect()
}

fn statuses(seen: &[Seen]) -> impl Iterator<Item = &TaskStatus> {
    seen.iter().filter_map(|s| match s {
        Seen::Status(st) => Some(st),
        Seen::Output(..) => None,
    })
}

fn output_of(seen: &[Seen], atomic_id: u32) -> String {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Output(id, text) if *id == atomic_id => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn t8_frames_come_in_order_per_atomic_task() {
    let req = task(
        "t1",
        vec![atomic(0, "echo zero", 10), atomic(1, "echo one", 10)],
    );
    let seen = run_to_end(req).await;
    let order: Vec<String> = seen
        .iter()
        .map(|s| match s {
            Seen::Status(st) => format!("status {} {}", st.atomic_id, st.status),
            Seen::Output(id, text) => format!("output {id} {}", text.trim()),
        })
        .collect();
    assert_eq!(
        order,
        [
            "status 0 1",
            "output 0 zero",
            "status 0 2",
            "status 1 1",
            "output 1 one",
            "status 1 2"
        ]
    );
    let last: Vec<&TaskStatus> = statuses(&seen).collect();
    assert_eq!(last[0].error_code, ERR_RUNNING);
    assert!(last[1].start_time_ms > 0 && last[1].end_time_ms >= last[1].start_time_ms);
    assert!(last.iter().all(|s| s.task_id == "t1"));
}

#[tokio::test]
async fn t8_a_failure_discards_the_rest() {
    let req = task(
        "t2",
        vec![atomic(0, "exit 3", 10), atomic(1, "echo never", 10)],
    );
    let seen = run_to_end(req).await;
    assert_eq!(
        codes(&seen),
        [
            (0, STATUS_RUNNING, ERR_RUNNING),
            (0, STATUS_FAILED, ERR_NONE),
            (1, STATUS_DISCARDED, ERR_NONE)
        ]
    );
    let st: Vec<&TaskStatus> = statuses(&seen).collect();
    assert_eq!(st[1].exit_code, 3);
    assert_eq!(st[2].error_msg, "not run: atomic task 0 did not succeed");
    assert_eq!(output_of(&seen, 1), "");
}

#[tokio::test]
async fn t8_timeout_and_signal() {
    let seen = run_to_end(task("t3", vec![atomic(0, "sleep 30", 1)])).await;
    let done = statuses(&seen).last().unwrap();
    assert_eq!((done.status, done.error_code), (STATUS_TIMEOUT, ERR_NONE));
    assert_eq!(
        done.error_msg,
        "timed out after 1 s; the process group was killed"
    );
    let seen = run_to_end(task("t4", vec![atomic(0, "kill -TERM $$", 10)])).await;
    let done = statuses(&seen).last().unwrap();
    assert_eq!((done.status, done.exit_code), (STATUS_FAILED, 128 + 15));
}

#[tokio::test]
async fn t8_output_limit_applies_per_atomic_task() {
    let mut req = task(
        "t5",
        vec![atomic(0, "seq 1000", 10), atomic(1, "echo short", 10)],
    );
    req.output_limit = 20;
    let seen = run_to_end(req).await;
    let marker = gse_core::seams::executor::truncation_marker(20);
    assert_eq!(
        output_of(&seen, 0),
        format!("1\n2\n3\n4\n5\n6\n7\n8\n9\n10{marker}")
    );
    assert_eq!(output_of(&seen, 1), "short\n");
}

#[tokio::test]
async fn t7_blocked_task_runs_nothing_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = task("t6", vec![atomic(0, "echo hi", 10), atomic(1, "true", 10)]);
    req.scripts = vec![ScriptFile {
        name: "x.sh".into(),
        dir: dir.path().to_str().unwrap().into(),
        content: b"#!/bin/sh\nrm -rf /\n".to_vec(),
    }];
    let seen = run_to_end(req).await;
    assert_eq!(
        codes(&seen),
        [
            (0, STATUS_FAILED, ERR_DANGER_BLOCKED),
            (1, STATUS_FAILED, ERR_DANGER_BLOCKED)
        ]
    );
    let msg = &statuses(&seen).next().unwrap().error_msg;
    assert!(msg.contains("rm_root"), "{msg}");
    assert!(!dir.path().join("x.sh").exists());
}

/// The agent checks where scripts go, too (issue 9 item 6): a shell
/// start-up file is refused in any directory (a temporary one here, so a
/// missing check writes nothing that matters).
#[tokio::test]
async fn r9_6_a_script_destination_is_checked_on_the_agent_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = task("r9", vec![atomic(0, "true", 10)]);
    req.scripts = vec![ScriptFile {
        name: ".bashrc".into(),
        dir: dir.path().to_str().unwrap().into(),
        content: b"echo hi\n".to_vec(),
    }];
    let seen = run_to_end(req).await;
    assert_eq!(codes(&seen), [(0, STATUS_FAILED, ERR_DANGER_BLOCKED)]);
    let msg = &statuses(&seen).next().unwrap().error_msg;
    assert!(msg.contains("script_destination"), "{msg}");
    assert!(!dir.path().join(".bashrc").exists());
}

#[tokio::test]
async fn t4_unknown_user_fails_every_atomic_task() {
    let mut req = task("t7", vec![atomic(0, "true", 10), atomic(1, "true", 10)]);
    req.user = "gse-no-such-user-x".into();
    let seen = run_to_end(req).await;
    assert_eq!(
        codes(&seen),
        [
            (0, STATUS_FAILED, ERR_NO_SUCH_USER),
            (1, STATUS_FAILED, ERR_NO_SUCH_USER)
        ]
    );
    let msg = &statuses(&seen).next().unwrap().error_msg;
    assert_eq!(
        msg,
        "user \"gse-no-such-user-x\" does not exist on this host"
    );
}

#[tokio::test]
async fn t3_bad_script_path_is_a_write_error() {
    let mut req = task("t8", vec![atomic(0, "true", 10)]);
    req.scripts = vec![ScriptFile {
        name: "../evil.sh".into(),
        dir: "/tmp".into(),
        content: b"true".to_vec(),
    }];
    let seen = run_to_end(req).await;
    assert_eq!(codes(&seen), [(0, STATUS_FAILED, ERR_SCRIPT_WRITE)]);
}

/// Writes `content` as `name` in `dir` and runs it with an argument, as
/// `user` (empty: as the agent).
async fn run_script(dir: &Path, name: &str, content: &str, user: &str) -> Vec<Seen> {
    let path = dir.join(name);
    let mut req = task(
        name,
        vec![atomic(0, &format!("{} gse-arg", path.display()), 20)],
    );
    req.user = user.into();
    req.scripts = vec![ScriptFile {
        name: name.into(),
        dir: dir.to_str().unwrap().into(),
        content: content.as_bytes().to_vec(),
    }];
    run_to_end(req).await
}

fn have(program: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: {program} not found, skipping its script test");
    }
    ok
}

#[tokio::test]
async fn t3_shell_python_and_perl_scripts_run_by_their_shebang() {
    let dir = tempfile::tempdir().unwrap();
    let sh = "#!/bin/bash\necho \"bash $1 ${BASH_VERSION%%.*}\"\n";
    let seen = run_script(dir.path(), "a.sh", sh, "").await;
    assert!(output_of(&seen, 0).starts_with("bash gse-arg "), "{seen:?}");
    if have("python3") {
        let py = "#!/usr/bin/env python3\nimport sys\nprint('python', sys.argv[1], sys.version_info[0])\n";
        let seen = run_script(dir.path(), "b.py", py, "").await;
        assert_eq!(output_of(&seen, 0), "python gse-arg 3\n", "{seen:?}");
    }
    if have("perl") {
        let pl = "#!/usr/bin/env perl\nprint \"perl $ARGV[0]\\n\";\n";
        let seen = run_script(dir.path(), "c.pl", pl, "").await;
        assert_eq!(output_of(&seen, 0), "perl gse-arg\n", "{seen:?}");
    }
}

#[tokio::test]
async fn t4_script_runs_as_the_named_user() {
    if !nix::unistd::Uid::effective().is_root() || user::resolve("nobody").is_err() {
        eprintln!("note: not root or no user nobody; skipping");
        return;
    }
    // Under /tmp (world-traversable), not in a 0700 temp dir, so nobody can
    // reach its script; the runner creates and chowns the two new levels.
    let base = std::env::temp_dir().join(format!("gse-t4-{:x}", rand::random::<u64>()));
    let dir = base.join("nobody");
    let seen = run_script(&dir, "who.sh", "#!/bin/sh\nid -un\nid -u\n", "nobody").await;
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(output_of(&seen, 0), "nobody\n65534\n", "{seen:?}");
}

#[tokio::test]
async fn t8_cancel_terminates_the_running_and_later_atomic_tasks() {
    let (runner, mut rx) = runner();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    runner.start(
        9,
        task("t9", vec![atomic(0, &cmd, 60), atomic(1, "true", 60)]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner.cancel("no-such-task"); // ignored
    runner.cancel("t9");
    runner.wait_idle().await;
    assert_eq!(runner.live(), 0);
    drop(runner);
    let seen = collect(&mut rx).await;
    assert_eq!(
        codes(&seen),
        [
            (0, STATUS_RUNNING, ERR_RUNNING),
            (0, STATUS_DISCARDED, ERR_TERMINATED),
            (1, STATUS_DISCARDED, ERR_TERMINATED)
        ]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "a child of the cancelled task survived");
}

#[tokio::test]
async fn link_loss_kills_every_task() {
    let (runner, rx) = runner();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let marker = dir.path().join(format!("survived-{i}"));
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        runner.start(9, task(&format!("L{i}"), vec![atomic(0, &cmd, 60)]));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runner.live(), 3);
    drop(rx); // the session's receiver goes first, as in link.rs
    let began = std::time::Instant::now();
    runner.cancel_all().await;
    assert!(began.elapsed() < Duration::from_secs(8));
    assert_eq!(runner.live(), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn duplicate_task_ids_are_ignored_while_running() {
    let (runner, mut rx) = runner();
    runner.start(9, task("dup", vec![atomic(0, "sleep 0.3; echo first", 10)]));
    runner.start(9, task("dup", vec![atomic(0, "echo second", 10)]));
    runner.wait_idle().await;
    drop(runner);
    let seen = collect(&mut rx).await;
    assert_eq!(output_of(&seen, 0), "first\n");
}

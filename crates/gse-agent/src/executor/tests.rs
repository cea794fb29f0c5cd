//! Real-process tests of [`ProcessExecutor`] (Unix).

use super::*;
use crate::task::user;
use gse_core::seams::executor::{RunAs, truncation_marker};

async fn run_req(req: ExecRequest, cancel: CancellationToken) -> (ExecOutcome, String) {
    let (tx, mut rx) = mpsc::channel(64);
    let outcome = ProcessExecutor.run(req, tx, cancel).await;
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        assert!(std::str::from_utf8(&chunk).is_ok(), "chunk is not UTF-8");
        out.extend_from_slice(&chunk);
    }
    (outcome, String::from_utf8(out).expect("output is UTF-8"))
}

async fn run(command: &str, timeout: Duration, limit: usize) -> (ExecOutcome, String) {
    let mut req = ExecRequest::new(command, timeout);
    req.output_limit = limit;
    run_req(req, CancellationToken::new()).await
}

async fn run_as(user: RunAs, login_env: bool, command: &str) -> (ExecOutcome, String) {
    let mut req = ExecRequest::new(command, Duration::from_secs(20));
    req.user = Some(user);
    req.login_env = login_env;
    run_req(req, CancellationToken::new()).await
}

/// The user, when this test can switch to it (root, user exists).
fn switchable(name: &str) -> Option<RunAs> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("note: not root, skipping the run-as-{name} test");
        return None;
    }
    match user::resolve(name) {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("note: skipping the run-as-{name} test: {e}");
            None
        }
    }
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn t8_exit_code_and_output() {
    let (o, out) = run("echo hello; echo err >&2; exit 3", LONG, 1024).await;
    assert_eq!(o.exit, ExitKind::Exited(3));
    assert!(out.contains("hello") && out.contains("err"), "{out}");
    assert!(!o.truncated);
    assert!(o.start_ms <= o.end_ms && o.start_ms > 0);
}

#[tokio::test]
async fn t8_killed_by_a_foreign_signal() {
    let (o, _) = run("kill -9 $$", LONG, 1024).await;
    assert_eq!(o.exit, ExitKind::Signaled(9));
}

#[tokio::test]
async fn t8_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-alive");
    // A forked child that would write the marker after the timeout.
    let cmd = format!("(sleep 3; touch {}) & sleep 30", marker.display());
    let (o, _) = run(&cmd, Duration::from_millis(300), 1024).await;
    assert_eq!(o.exit, ExitKind::TimedOut);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the forked child survived the timeout");
}

#[tokio::test]
async fn t8_cancel_kills_promptly() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let began = std::time::Instant::now();
    let (o, _) = run_req(ExecRequest::new("sleep 30", LONG), cancel).await;
    assert_eq!(o.exit, ExitKind::Cancelled);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn t8_output_is_bounded_and_marked() {
    let (o, out) = run("head -c 100000 /dev/zero; echo tail >&2", LONG, 1000).await;
    assert_eq!(o.exit, ExitKind::Exited(0));
    assert!(o.truncated);
    let marker = truncation_marker(1000);
    assert_eq!(out.len(), 1000 + marker.len(), "{:?}", &out[1000..]);
    assert!(out.ends_with(&marker));
}

#[tokio::test]
async fn t8_split_and_invalid_utf8_from_a_process() {
    // "中" arrives in two writes; 0xff is not text.
    let cmd = r"printf '\344\270'; sleep 0.3; printf '\255 a\377b\n'";
    let (o, out) = run(cmd, LONG, 1024).await;
    assert_eq!(o.exit, ExitKind::Exited(0));
    assert_eq!(out, "中 a\u{FFFD}b\n");
}

#[tokio::test]
async fn t8_spawn_failure_is_reported() {
    let mut req = ExecRequest::new("true", LONG);
    // More groups than any kernel allows: setgroups fails in the child.
    let mut me = user::current().unwrap();
    me.groups = vec![me.gid; 70_000];
    req.user = Some(me);
    let (o, _) = run_req(req, CancellationToken::new()).await;
    if nix::unistd::Uid::effective().is_root() {
        let ExitKind::SpawnFailed(msg) = &o.exit else {
            panic!("expected a spawn failure, got {:?}", o.exit)
        };
        assert!(msg.contains("as user"), "{msg}");
    }
}

/// `id` as the user shows its uid, its primary and supplementary groups,
/// and the passwd-derived environment.
async fn assert_runs_as(u: RunAs) {
    let cmd = "id -u; id -G; echo \"$HOME|$USER|$LOGNAME|$SHELL\"; pwd";
    let (o, out) = run_as(u.clone(), false, cmd).await;
    assert_eq!(o.exit, ExitKind::Exited(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], u.uid.to_string(), "{out}");
    let mut got: Vec<u32> = lines[1].split(' ').map(|g| g.parse().unwrap()).collect();
    let mut want = u.groups.clone();
    got.sort_unstable();
    got.dedup();
    want.sort_unstable();
    want.dedup();
    assert_eq!(got, want, "groups of {}", u.name);
    let env = format!(
        "{}|{}|{}|{}",
        u.home.display(),
        u.name,
        u.name,
        u.shell.display()
    );
    assert_eq!(lines[2], env);
    let cwd = if u.home.is_dir() {
        u.home.clone()
    } else {
        "/".into()
    };
    assert_eq!(lines[3], cwd.display().to_string());
}

#[tokio::test]
async fn t4_runs_as_nobody() {
    if let Some(u) = switchable("nobody") {
        assert_eq!(u.uid, 65534);
        assert_runs_as(u).await;
    }
}

#[tokio::test]
async fn t4_keeps_supplementary_groups() {
    // postgres is in ssl-cert on this image; any user with a supplementary
    // group proves the point, and the test is skipped without one.
    if let Some(u) = switchable("postgres") {
        assert!(u.groups.len() > 1, "postgres has no supplementary group");
        assert_runs_as(u).await;
    }
}

#[tokio::test]
async fn t5_login_env_is_a_clean_login_shell() {
    let Some(u) = switchable("root") else { return };
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets it"
    );
    let cmd = "shopt -q login_shell && echo login; echo \"[$CARGO_MANIFEST_DIR]|$HOME|$USER\"";
    let (o, out) = run_as(u.clone(), true, cmd).await;
    assert_eq!(o.exit, ExitKind::Exited(0), "{out}");
    assert!(out.contains("login\n"), "not a login shell: {out}");
    assert!(
        out.contains(&format!("[]|{}|root", u.home.display())),
        "{out}"
    );
    // Without login_env the agent's environment is kept (only the user's
    // own variables are replaced).
    let (_, out) = run_as(u, false, "echo \"[$CARGO_MANIFEST_DIR]\"").await;
    assert!(!out.contains("[]"), "{out}");
}

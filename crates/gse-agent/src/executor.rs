//! The real `Executor`: runs a command as an OS process (T2, T8).
//!
//! The command runs under `sh -c` in a new process group, so that a timeout
//! or a cancel kills the whole tree it started (SIGTERM to the group, then
//! SIGKILL after [`KILL_GRACE`]). stdout and stderr are streamed as they
//! come, interleaved, up to the request's output limit; the rest is drained
//! and dropped so the process never blocks on a full pipe.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gse_core::now_ms;
use gse_core::seams::{ExecOutcome, ExecRequest, Executor, ExitKind};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Time between SIGTERM and SIGKILL to a timed-out process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Runs commands as real processes.
#[derive(Clone, Debug, Default)]
pub struct ProcessExecutor;

#[async_trait]
impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn run(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<Bytes>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let start_ms = now_ms();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&req.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                return ExecOutcome {
                    exit: ExitKind::SpawnFailed(format!("cannot start /bin/sh: {e}")),
                    start_ms,
                    end_ms: now_ms(),
                    truncated: false,
                };
            }
        };
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(req.output_limit));
        let truncated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pumps =
            [
                child.stdout.take().map(|r| {
                    tokio::spawn(pump(r, output.clone(), budget.clone(), truncated.clone()))
                }),
                child.stderr.take().map(|r| {
                    tokio::spawn(pump(r, output.clone(), budget.clone(), truncated.clone()))
                }),
            ];
        drop(output);

        let exit = tokio::select! {
            status = child.wait() => match status {
                Ok(st) => exit_kind(st),
                Err(e) => ExitKind::SpawnFailed(format!("cannot wait for the process: {e}")),
            },
            _ = tokio::time::sleep(req.timeout) => {
                kill_group(pgid, &mut child).await;
                ExitKind::TimedOut
            }
            _ = cancel.cancelled() => {
                kill_group(pgid, &mut child).await;
                ExitKind::Cancelled
            }
        };
        // Children that kept the pipes open are gone with the group; a
        // daemon that escaped it must not hold the result back forever.
        for pump in pumps.into_iter().flatten() {
            let _ = tokio::time::timeout(KILL_GRACE, pump).await;
        }
        ExecOutcome {
            exit,
            start_ms,
            end_ms: now_ms(),
            truncated: truncated.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Exited(code),
        (None, Some(sig)) => ExitKind::Signaled(sig),
        (None, None) => ExitKind::Exited(-1),
    }
}

/// SIGTERM to the group, then SIGKILL after the grace period.
async fn kill_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        // Whatever of the group survived the leader's exit gets SIGKILL too.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

/// Copies a pipe to `out` while the shared byte budget lasts; drains the rest.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    out: mpsc::Sender<Bytes>,
    budget: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    truncated: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let allowed = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(n))
            })
            .unwrap_or(0)
            .min(n);
        if allowed < n {
            truncated.store(true, Ordering::Relaxed);
        }
        if allowed > 0
            && out
                .send(Bytes::copy_from_slice(&buf[..allowed]))
                .await
                .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(command: &str, timeout: Duration, limit: usize) -> (ExecOutcome, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(64);
        let req = ExecRequest {
            command: command.into(),
            timeout,
            output_limit: limit,
        };
        let outcome = ProcessExecutor.run(req, tx, CancellationToken::new()).await;
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk);
        }
        (outcome, out)
    }

    #[tokio::test]
    async fn exit_code_and_output() {
        let (o, out) = run(
            "echo hello; echo err >&2; exit 3",
            Duration::from_secs(10),
            1024,
        )
        .await;
        assert_eq!(o.exit, ExitKind::Exited(3));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("hello") && text.contains("err"), "{text}");
        assert!(!o.truncated);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
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
    async fn output_is_bounded_and_marked() {
        let (o, out) = run("head -c 100000 /dev/zero", Duration::from_secs(10), 1000).await;
        assert_eq!(o.exit, ExitKind::Exited(0));
        assert_eq!(out.len(), 1000);
        assert!(o.truncated);
    }
}

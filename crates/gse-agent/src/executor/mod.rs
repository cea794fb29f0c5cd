//! The real `Executor`: runs a command as an OS process (T2-T5, T8).
//!
//! Start at [`ProcessExecutor`]. The command runs under `sh -c` (Unix) or
//! `cmd /C` (Windows, [`windows`], untested) in a new process group, so a
//! timeout or a cancel kills the whole tree it started: SIGTERM to the group,
//! then SIGKILL after [`KILL_GRACE`]. As a named user it switches groups, gid
//! and uid in the child, optionally through the user's login shell
//! ([`unix`]). stdout and stderr are streamed as they come, interleaved, as
//! valid UTF-8 and up to the output limit ([`output`]); the rest is drained
//! and dropped so the process never blocks on a full pipe. Resolving the
//! user, writing scripts and reporting status are the task runner's
//! (`crate::task`).

mod output;
#[cfg(all(test, unix))]
mod tests;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as platform;
#[cfg(windows)]
use windows as platform;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gse_core::now_ms;
use gse_core::seams::{ExecOutcome, ExecRequest, Executor, ExitKind};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use output::{OutputSink, Utf8Sanitizer};
/// The user switch, for the plugin supervisor's control commands.
#[cfg(unix)]
pub(crate) use unix::{needs_switch, switch_user};

/// Time between SIGTERM and SIGKILL to a timed-out process group; also how
/// long output is still read after the process ended (a background child
/// may hold the pipes open).
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 16 * 1024;

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
        let mut child = match spawn(&req) {
            Ok(child) => child,
            Err(message) => {
                return ExecOutcome {
                    exit: ExitKind::SpawnFailed(message),
                    start_ms,
                    end_ms: now_ms(),
                    truncated: false,
                };
            }
        };
        let truncated = Arc::new(AtomicBool::new(false));
        let sink = OutputSink::new(output, req.output_limit, truncated.clone());
        let pump = tokio::spawn(pump(child.stdout.take(), child.stderr.take(), sink));
        let exit = wait(&mut child, req.timeout, &cancel).await;
        finish_pump(pump).await;
        ExecOutcome {
            exit,
            start_ms,
            end_ms: now_ms(),
            truncated: truncated.load(Ordering::Relaxed),
        }
    }
}

/// Starts the process with piped output in its own process group.
fn spawn(req: &ExecRequest) -> Result<Child, String> {
    let mut cmd: Command = platform::try_build_command(req)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    cmd.spawn()
        .map_err(|e| platform::describe_spawn_error(req, &e))
}

/// Waits for the process, or kills its tree on timeout or cancel.
async fn wait(child: &mut Child, timeout: Duration, cancel: &CancellationToken) -> ExitKind {
    tokio::select! {
        status = child.wait() => match status {
            Ok(st) => platform::exit_kind(st),
            Err(e) => ExitKind::SpawnFailed(format!("cannot wait for the process: {e}")),
        },
        _ = tokio::time::sleep(timeout) => {
            platform::kill_tree(child, KILL_GRACE).await;
            ExitKind::TimedOut
        }
        _ = cancel.cancelled() => {
            platform::kill_tree(child, KILL_GRACE).await;
            ExitKind::Cancelled
        }
    }
}

/// Lets the pump finish reading; a daemon that escaped the group must not
/// hold the result back, so after the grace period the pump is stopped
/// (which drops the output sender before the outcome is returned).
async fn finish_pump(mut pump: JoinHandle<()>) {
    if tokio::time::timeout(KILL_GRACE, &mut pump).await.is_err() {
        pump.abort();
        let _ = pump.await;
    }
}

/// Reads both pipes until both end, sending what they say to `sink`. One
/// task for both keeps the budget and the marker in order.
async fn pump(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    mut sink: OutputSink,
) {
    let mut out = Pipe::new(stdout);
    let mut err = Pipe::new(stderr);
    loop {
        let text = tokio::select! {
            text = out.read(), if out.is_open() => text,
            text = err.read(), if err.is_open() => text,
            else => return,
        };
        sink.write(text).await;
    }
}

// === Pipe ===

/// One output pipe with its own UTF-8 carry-over.
struct Pipe<R> {
    reader: Option<R>,
    buf: Vec<u8>,
    utf8: Utf8Sanitizer,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: Option<R>) -> Self {
        Pipe {
            reader,
            buf: vec![0; READ_CHUNK],
            utf8: Utf8Sanitizer::default(),
        }
    }

    fn is_open(&self) -> bool {
        self.reader.is_some()
    }

    /// The next piece of text. At the end (or on a read error) the pipe
    /// closes and a held-back partial character is flushed. Cancel-safe:
    /// nothing changes before the read completes.
    async fn read(&mut self) -> String {
        let mut text = String::new();
        let Some(reader) = self.reader.as_mut() else {
            return text;
        };
        match reader.read(&mut self.buf).await {
            Ok(n) if n > 0 => self.utf8.push(&self.buf[..n], &mut text),
            _ => {
                self.reader = None;
                self.utf8.finish(&mut text);
            }
        }
        text
    }
}

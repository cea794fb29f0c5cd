//! `Executor`: how an agent runs one command (T2..T8).
//!
//! The real implementation (gse-agent's process runner) starts an OS process
//! in its own process group, optionally as another user with that user's
//! login environment, bounds its output and kills the whole group on timeout
//! or cancel. A simulation executor for scale benchmarks implements the same
//! trait and says so in its name. What to run before and after a command
//! (danger checks, script files, user lookup, status frames) is the agent's
//! task runner, not this seam.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::task::DEFAULT_OUTPUT_LIMIT;

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecRequest {
    /// Command line, run by the platform shell (`sh -c` on Unix, `cmd /C`
    /// on Windows; the user's login shell with `login_env`).
    pub command: String,
    pub timeout: Duration,
    /// Output beyond this many bytes is dropped; [`truncation_marker`] is
    /// sent once in its place.
    pub output_limit: usize,
    /// Run as this user (T4); `None` = as the agent, with its environment.
    pub user: Option<RunAs>,
    /// Run through `user`'s shell as a login shell, with a clean
    /// environment, so its profile applies (T5). Needs `user`.
    pub login_env: bool,
}

impl ExecRequest {
    /// A request to run `command` as the agent, with the default output limit.
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        ExecRequest {
            command: command.into(),
            timeout,
            output_limit: DEFAULT_OUTPUT_LIMIT as usize,
            user: None,
            login_env: false,
        }
    }
}

/// A user to run as, already resolved from the host's user database (the
/// lookup reads NSS, which must not happen in a forked child).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Every group of the user, primary included (`getgrouplist`).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    /// Login shell from the user database; empty means `/bin/sh`.
    pub shell: PathBuf,
}

/// How the command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal, not by us.
    Signaled(i32),
    TimedOut,
    Cancelled,
    /// Could not start (including: could not switch to the user); the
    /// message says why.
    SpawnFailed(String),
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit: ExitKind,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Whether output beyond `output_limit` was dropped.
    pub truncated: bool,
}

/// The text sent once, after the first `limit` bytes, when output is cut.
pub fn truncation_marker(limit: usize) -> String {
    format!("\n[gse: output truncated at {limit} bytes]\n")
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Short name for logs ("process", "simulated").
    fn kind(&self) -> &'static str;
    /// Runs `req`, sending output chunks (stdout and stderr interleaved) to
    /// `output` as they come, until it ends, times out, or `cancel` fires.
    ///
    /// Every chunk is valid UTF-8 on its own; together they hold at most
    /// `req.output_limit` bytes plus one [`truncation_marker`]. `output` is
    /// dropped before this returns, so a reader sees the end of the stream
    /// no later than the outcome.
    async fn run(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<Bytes>,
        cancel: CancellationToken,
    ) -> ExecOutcome;
}

//! `Executor`: how an agent runs one command (T2..T8).
//!
//! The real implementation (gse-agent's process runner) starts an OS process
//! in its own process group, bounds its output and kills the whole group on
//! timeout or cancel. A simulation executor for scale benchmarks implements
//! the same trait and says so in its name.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecRequest {
    /// Command line, run by the platform shell (`sh -c` on Unix).
    pub command: String,
    pub timeout: Duration,
    /// Output beyond this many bytes is dropped and marked truncated.
    pub output_limit: usize,
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
    /// Could not start; the message says why.
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

#[async_trait]
pub trait Executor: Send + Sync {
    /// Short name for logs ("process", "simulated").
    fn kind(&self) -> &'static str;
    /// Runs `req`, sending output chunks (stdout and stderr interleaved) to
    /// `output` as they come, until it ends, times out, or `cancel` fires.
    async fn run(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<Bytes>,
        cancel: CancellationToken,
    ) -> ExecOutcome;
}

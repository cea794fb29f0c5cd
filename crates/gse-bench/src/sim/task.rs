//! A simulated agent's answer to `RunScript`: the frames a real agent sends
//! (gse-agent `task::runner::run_atomic`), for each atomic task in order:
//! `TaskStatus` running (status 1, error_code 115, start time), the output
//! as `TaskOutput`, then the final `TaskStatus` made by the real agent's own
//! [`final_status`]. Every frame echoes the RunScript's stream id.
//!
//! Differences from a real agent, all on the agent side: the command runs
//! through the [`Executor`] it is given (the simulation runner; nothing is
//! spawned, so there are no danger re-check, user, script files or
//! timeouts), and the frames of one task leave in one TLS write (a real
//! agent queues them one by one). The server handles every frame the same.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures::SinkExt;
use gse_agent::task::runner::final_status;
use gse_core::now_ms;
use gse_core::seams::{ExecRequest, Executor};
use gse_core::task::{ERR_RUNNING, STATUS_RUNNING};
use gse_proto::link::{AtomicTask, RunScript, TaskOutput, TaskStatus};
use gse_proto::{Frame, MsgType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Link;

/// Output chunks buffered between the executor and the frame writer.
const OUTPUT_CHUNKS: usize = 16;

/// Runs every atomic task of the `RunScript` in `frame` and sends its
/// frames; an error is a RunScript that does not decode or a failed link.
pub(super) async fn answer(executor: &dyn Executor, link: &mut Link, frame: &Frame) -> Result<()> {
    let req: RunScript = frame.decode().context("RunScript does not decode")?;
    let reply = Reply {
        stream_id: frame.stream_id,
        task_id: &req.task_id,
    };
    for atomic in &req.atomic_tasks {
        run_atomic(executor, link, &reply, &req, atomic).await?;
    }
    link.flush().await.context("cannot send task frames")
}

/// What every frame of one task carries.
struct Reply<'a> {
    stream_id: u64,
    task_id: &'a str,
}

impl Reply<'_> {
    fn status(&self, mut status: TaskStatus) -> Frame {
        status.task_id = self.task_id.to_string();
        Frame::new(MsgType::TaskStatus, self.stream_id, &status)
    }

    fn output(&self, atomic_id: u32, data: Vec<u8>) -> Frame {
        let msg = TaskOutput {
            task_id: self.task_id.to_string(),
            atomic_id,
            data,
        };
        Frame::new(MsgType::TaskOutput, self.stream_id, &msg)
    }
}

/// Running, then the output, then the final status, queued on `link`.
async fn run_atomic(
    executor: &dyn Executor,
    link: &mut Link,
    reply: &Reply<'_>,
    req: &RunScript,
    atomic: &AtomicTask,
) -> Result<()> {
    let start_ms = now_ms();
    link.feed(reply.status(running(atomic.atomic_id, start_ms)))
        .await?;
    let mut exec = ExecRequest::new(
        atomic.command.clone(),
        Duration::from_secs(u64::from(atomic.timeout_seconds)),
    );
    if req.output_limit > 0 {
        exec.output_limit = usize::try_from(req.output_limit).unwrap_or(usize::MAX);
    }
    let (tx, rx) = mpsc::channel(OUTPUT_CHUNKS);
    let (outcome, output) = tokio::join!(
        executor.run(exec, tx, CancellationToken::new()),
        collect(rx),
    );
    if !output.is_empty() {
        link.feed(reply.output(atomic.atomic_id, output.to_vec()))
            .await?;
    }
    let mut done = final_status(atomic.atomic_id, atomic.timeout_seconds, &outcome);
    done.start_time_ms = start_ms;
    link.feed(reply.status(done)).await?;
    Ok(())
}

fn running(atomic_id: u32, start_ms: u64) -> TaskStatus {
    TaskStatus {
        atomic_id,
        status: STATUS_RUNNING,
        error_code: ERR_RUNNING,
        start_time_ms: start_ms,
        ..Default::default()
    }
}

/// Every chunk the executor sends, until it drops its sender.
async fn collect(mut rx: mpsc::Receiver<bytes::Bytes>) -> BytesMut {
    let mut all = BytesMut::new();
    while let Some(chunk) = rx.recv().await {
        all.extend_from_slice(&chunk);
    }
    all
}

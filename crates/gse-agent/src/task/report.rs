//! Reporting one task upstream: `TaskStatus` and batched `TaskOutput` frames.
//!
//! A [`Reporter`] belongs to one task and is used by one tokio task, so its
//! frames reach the link's outbound queue in the order they were made:
//! for each atomic task, RUNNING, then its output, then its final status.
//! Output chunks from the executor are gathered and sent every
//! [`FLUSH_BYTES`] or [`FLUSH_AFTER`], whichever comes first, so a chatty
//! script does not become one frame per line. A lost link makes sends fail
//! silently: the server fails the task with 117 then, and the link code
//! cancels every task.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gse_proto::link::{TaskOutput, TaskStatus};
use gse_proto::{Frame, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Output batched up to this many bytes before a frame is sent.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Output waits at most this long for more before a frame is sent.
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// Sends one task's frames on the link.
#[derive(Clone, Debug)]
pub struct Reporter {
    out: mpsc::Sender<Frame>,
    /// The RunScript's stream id, echoed on every frame of the task.
    stream_id: u64,
    task_id: String,
}

impl Reporter {
    pub fn new(out: mpsc::Sender<Frame>, stream_id: u64, task_id: String) -> Self {
        Reporter {
            out,
            stream_id,
            task_id,
        }
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Sends a status; `status.task_id` is filled in here.
    pub async fn status(&self, mut status: TaskStatus) {
        status.task_id = self.task_id.clone();
        let frame = Frame::new(MsgType::TaskStatus, self.stream_id, &status);
        let _ = self.out.send(frame).await;
    }

    pub async fn output(&self, atomic_id: u32, data: Bytes) {
        let msg = TaskOutput {
            task_id: self.task_id.clone(),
            atomic_id,
            data: data.to_vec(),
        };
        let _ = self
            .out
            .send(Frame::new(MsgType::TaskOutput, self.stream_id, &msg))
            .await;
    }
}

/// Forwards the executor's chunks for `atomic_id` as batched frames until
/// the executor drops its sender; every byte is flushed before it returns.
pub async fn forward_output(
    mut chunks: mpsc::Receiver<Bytes>,
    reporter: &Reporter,
    atomic_id: u32,
) {
    let mut batch = BytesMut::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let due = deadline;
        tokio::select! {
            chunk = chunks.recv() => {
                let Some(chunk) = chunk else { break };
                deadline.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
                batch.extend_from_slice(&chunk);
                if batch.len() < FLUSH_BYTES {
                    continue;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
        }
        deadline = None;
        reporter.output(atomic_id, batch.split().freeze()).await;
    }
    if !batch.is_empty() {
        reporter.output(atomic_id, batch.freeze()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frame: &Frame) -> TaskOutput {
        assert_eq!(frame.msg_type, MsgType::TaskOutput);
        assert_eq!(frame.stream_id, 7);
        frame.decode().unwrap()
    }

    #[tokio::test]
    async fn small_chunks_are_batched_and_all_flushed() {
        let (frames_tx, mut frames) = mpsc::channel(16);
        let reporter = Reporter::new(frames_tx, 7, "t".into());
        let (tx, rx) = mpsc::channel(16);
        let fwd = tokio::spawn(async move { forward_output(rx, &reporter, 1).await });
        for part in ["a", "b", "c"] {
            tx.send(Bytes::from(part)).await.unwrap();
        }
        tokio::time::sleep(FLUSH_AFTER * 2).await;
        let first = decode(&frames.recv().await.unwrap());
        assert_eq!((first.atomic_id, first.data.as_slice()), (1, &b"abc"[..]));
        tx.send(Bytes::from("d")).await.unwrap();
        drop(tx);
        fwd.await.unwrap();
        assert_eq!(decode(&frames.recv().await.unwrap()).data, b"d");
        assert!(frames.recv().await.is_none());
    }

    #[tokio::test]
    async fn big_output_is_cut_into_bounded_frames() {
        let (frames_tx, mut frames) = mpsc::channel(64);
        let reporter = Reporter::new(frames_tx, 7, "t".into());
        let (tx, rx) = mpsc::channel(64);
        let fwd = tokio::spawn(async move { forward_output(rx, &reporter, 0).await });
        for _ in 0..40 {
            tx.send(Bytes::from(vec![b'x'; 16 * 1024])).await.unwrap();
        }
        drop(tx);
        fwd.await.unwrap();
        let mut total = 0;
        while let Some(f) = frames.recv().await {
            let len = decode(&f).data.len();
            assert!(len < FLUSH_BYTES + 16 * 1024, "{len}");
            total += len;
        }
        assert_eq!(total, 40 * 16 * 1024);
    }
}

//! FileProgress reports: counters the transfer updates, and a reporter
//! that turns them into a frame about once a second plus a final one.
//!
//! Running reports are dropped when the link's queue is full (the next one
//! says more); the final report waits for room, so it is never lost while
//! the link is up.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use gse_proto::MsgType;
use gse_proto::link::{FileProgress, FileState, ProgressSide};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::codes::Failure;
use super::direct::LinkOut;

/// How often running reports go out.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The window `bytes_per_s` is measured over.
const SPEED_WINDOW: Duration = Duration::from_secs(3);

/// What a download has done so far.
#[derive(Debug, Default)]
pub struct DownloadStats {
    /// Verified bytes written.
    pub done: AtomicU64,
    pub p2p: AtomicU64,
    pub direct: AtomicU64,
    pub files_done: AtomicU32,
    /// What the download counts towards, once its plan is known.
    pub total: AtomicU64,
    pub files_total: AtomicU32,
    /// Why pieces meant for peers first went direct (F3); set once.
    pub fallback: OnceLock<String>,
}

impl DownloadStats {
    /// Counts `bytes` verified and written, fetched over P2P or direct.
    pub fn add(&self, bytes: u64, direct: bool) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        let via = if direct { &self.direct } else { &self.p2p };
        via.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Sends one task's FileProgress frames.
#[derive(Debug)]
pub struct Reporter {
    out: mpsc::Sender<LinkOut>,
    stream_id: u64,
    base: FileProgress,
    samples: VecDeque<(Instant, u64)>,
}

// === impl Reporter ===

impl Reporter {
    pub fn new(
        out: mpsc::Sender<LinkOut>,
        stream_id: u64,
        transfer_id: &str,
        task_index: u32,
        side: ProgressSide,
    ) -> Self {
        let mut base = FileProgress {
            transfer_id: transfer_id.to_owned(),
            task_index,
            ..FileProgress::default()
        };
        base.set_side(side);
        Reporter {
            out,
            stream_id,
            base,
            samples: VecDeque::new(),
        }
    }

    /// Sets what the reports count towards.
    pub fn totals(&mut self, total_bytes: u64, files_total: u32) {
        self.base.total_bytes = total_bytes;
        self.base.files_total = files_total;
    }

    /// A download's counters as a report in `state`.
    pub fn download(&mut self, stats: &DownloadStats, state: FileState) -> FileProgress {
        let done = stats.done.load(Ordering::Relaxed);
        let mut p = FileProgress {
            done_bytes: done,
            total_bytes: stats.total.load(Ordering::Relaxed),
            files_total: stats.files_total.load(Ordering::Relaxed),
            bytes_p2p: stats.p2p.load(Ordering::Relaxed),
            bytes_direct: stats.direct.load(Ordering::Relaxed),
            files_done: stats.files_done.load(Ordering::Relaxed),
            fallback_reason: stats.fallback.get().cloned().unwrap_or_default(),
            bytes_per_s: self.speed(done),
            ..self.base.clone()
        };
        p.set_state(state);
        p
    }

    /// An upload's bytes served as a report in `state`.
    pub fn upload(&mut self, served: u64, state: FileState) -> FileProgress {
        let mut p = FileProgress {
            done_bytes: served,
            bytes_per_s: self.speed(served),
            ..self.base.clone()
        };
        p.set_state(state);
        p
    }

    /// Sends a running report unless the queue is full.
    pub fn send_running(&self, p: FileProgress) {
        let _ = self
            .out
            .try_send(LinkOut::new(MsgType::FileProgress, self.stream_id, &p));
    }

    /// Sends a final report: `failure` makes it FILE_FAILED.
    pub async fn send_final(&self, mut p: FileProgress, failure: Option<&Failure>) {
        if let Some(f) = failure {
            p.set_state(FileState::FileFailed);
            p.error_code = f.code;
            p.error_message = f.message.clone();
        }
        let _ = self
            .out
            .send(LinkOut::new(MsgType::FileProgress, self.stream_id, &p))
            .await;
    }

    /// Bytes per second over the last few seconds, given the total now.
    fn speed(&mut self, total: u64) -> u64 {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now - *t > SPEED_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples.front().copied().unwrap_or((now, total));
        let secs = (now - t0).as_secs_f64();
        if secs < 0.2 {
            return 0;
        }
        (total.saturating_sub(b0) as f64 / secs) as u64
    }
}

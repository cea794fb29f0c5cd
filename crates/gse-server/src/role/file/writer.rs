//! The file role's side of the job engine's writer ([`crate::role::jobs`]):
//! how a transfer is saved, and its work between saves (direct requests
//! their source left waiting, transfers past their deadline).
//!
//! Each save writes a whole transfer, so saves are paced ([`pace`]): a
//! change that made an entry final is saved within [`FLUSH_EVERY`] for small
//! transfers and less often for large ones (a finished transfer at once),
//! progress alone at most every [`PROGRESS_SAVE_EVERY`]. Polls of live
//! transfers read memory, so pacing delays nothing a caller sees; after a
//! crash, the last few seconds of progress may be lost. At start, entries
//! the last run left unfinished are closed (117).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::seams::StoreError;
use gse_core::seams::state_store::{EntryFailure, FileTransferRecord};
use tokio_util::sync::CancellationToken;

use super::codes::{ERR_AGENT_DOWN, STATUS_FAILED};
use super::model::{Effect, LiveTransfer, Pace};
use super::{FileService, metrics};
use crate::role::jobs::{self, Due, JobKind, Ledger, Memory, Names, Take, Timing};

/// How often changes are looked at and saved.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Least time between two saves of a transfer whose only change is progress.
pub const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(5);
/// How long a finished transfer stays in memory.
pub const MEMORY_TTL: Duration = Duration::from_secs(600);
/// Most entries of finished transfers kept in memory; beyond it the oldest
/// finished transfers leave early.
pub const MEMORY_ENTRIES: usize = 500_000;
/// Bytes of pushed files (`async_push_file`) that transfers in memory may
/// hold; beyond it the oldest finished ones leave early.
pub const MEMORY_PUSHED_BYTES: usize = 256 << 20;
/// What finished transfers may hold of memory (no logs; pushed files'
/// bytes until they leave).
pub const MEMORY: Memory = Memory {
    ttl: MEMORY_TTL,
    max_entries: MEMORY_ENTRIES,
    max_bytes: MEMORY_PUSHED_BYTES,
};

/// How often `t` may be saved: about 1 ms per 10 entries between saves.
fn pace(entries: usize) -> Pace {
    let scaled = Duration::from_millis(entries as u64 / 10);
    let final_every = FLUSH_EVERY.max(scaled);
    Pace {
        final_every,
        progress_every: PROGRESS_SAVE_EVERY.max(final_every),
    }
}

impl FileService {
    /// Saves changes and keeps transfers in check until `shutdown`, then
    /// saves everything once more.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        jobs::run(self, shutdown).await
    }
}

impl JobKind for FileService {
    type Job = LiveTransfer;
    type Batch = Vec<FileTransferRecord>;
    type Error = StoreError;
    const NAMES: Names = Names {
        noun: "file transfer",
        plural: "transfers",
        retention_key: "file.retention",
        flush_seconds: metrics::STORE_FLUSH_SECONDS,
        store_failures: metrics::STORE_FAILURES_TOTAL,
    };

    fn ledger(&self) -> &Ledger<LiveTransfer> {
        &self.jobs
    }

    fn timing(&self) -> Timing {
        Timing {
            flush_every: FLUSH_EVERY,
            slow_every: None,
            memory: MEMORY,
            retention: self.config.retention,
        }
    }

    /// The transfer's whole record when its save is due.
    fn take(
        &self,
        t: &Arc<LiveTransfer>,
        now: Instant,
        force: bool,
        batch: &mut Vec<FileTransferRecord>,
    ) -> Take {
        let mut st = t.state.lock();
        let p = pace(st.entries.len());
        match st.take_record(t, &self.node_id, now, p, force) {
            Some(record) => {
                batch.push(record);
                Take::Taken
            }
            None if st.book.queued() => Take::Later,
            None => Take::Clean,
        }
    }

    fn is_empty(batch: &Vec<FileTransferRecord>) -> bool {
        batch.is_empty()
    }

    /// Marks the transfers of a refused batch unsaved again.
    fn unsave(
        &self,
        taken: &[Arc<LiveTransfer>],
        _: &Vec<FileTransferRecord>,
    ) -> Vec<Arc<LiveTransfer>> {
        taken
            .iter()
            .filter(|t| {
                let mut effect = Effect::default();
                t.state.lock().unsave(&mut effect);
                effect.job.enqueue
            })
            .cloned()
            .collect()
    }

    async fn write(&self, batch: Arc<Vec<FileTransferRecord>>) -> Result<(), StoreError> {
        self.store.write_file_transfers(batch).await
    }

    async fn prune(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.store.prune_file_transfers(created_before_ms).await
    }

    async fn fail_unfinished(&self, end_ms: u64) -> Result<u64, StoreError> {
        let failure = EntryFailure {
            status: STATUS_FAILED,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the transfer; start it again".into(),
            end_ms,
        };
        self.store
            .fail_unfinished_file_transfers(&self.node_id, failure)
            .await
    }

    async fn round(&self, now: Instant, due: Due) {
        self.sweep_relays(now);
        self.resend_moved().await;
        if due.second {
            self.close_overdue(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_transfers_are_saved_less_often() {
        assert_eq!(pace(10).final_every, FLUSH_EVERY);
        assert_eq!(pace(10).progress_every, PROGRESS_SAVE_EVERY);
        assert_eq!(pace(100_000).final_every, Duration::from_secs(10));
        assert_eq!(pace(100_000).progress_every, Duration::from_secs(10));
    }
}

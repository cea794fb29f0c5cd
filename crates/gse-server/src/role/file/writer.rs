//! The file role's worker: saves what changed in batches, answers direct
//! requests their source left waiting, closes transfers past their
//! deadline, forgets finished transfers and prunes old records.
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
use gse_core::seams::state_store::EntryFailure;
use tokio_util::sync::CancellationToken;

use super::codes::{ERR_AGENT_DOWN, STATUS_FAILED};
use super::model::{Effect, LiveTransfer, Pace};
use super::{FileService, metrics};

/// How often changes are looked at and saved.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Least time between two saves of a transfer whose only change is progress.
pub const PROGRESS_SAVE_EVERY: Duration = Duration::from_secs(5);
/// How long a finished transfer stays in memory.
pub const MEMORY_TTL: Duration = Duration::from_secs(600);
/// Most entries of finished transfers kept in memory; beyond it the oldest
/// finished transfers leave early.
pub const MEMORY_ENTRIES: usize = 500_000;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
        let mut failing = false;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = Instant::now();
        let mut pruned: Option<Instant> = None;
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            self.flush(stop, &mut failing).await;
            if stop {
                return;
            }
            let now = Instant::now();
            self.sweep_relays(now);
            if now.duration_since(housekeeping) >= HOUSEKEEPING_EVERY {
                housekeeping = now;
                self.close_overdue(now);
                self.evict(now, MEMORY_ENTRIES);
            }
            if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned = Some(Instant::now());
                self.prune().await;
            }
        }
    }

    /// Writes the transfers whose save is due (all of them with `force`);
    /// true when the store took the batch (or there was nothing to save).
    pub(super) async fn flush(&self, force: bool, failing: &mut bool) -> bool {
        let now = Instant::now();
        let drained = std::mem::take(&mut *self.queue.lock());
        let mut batch = Vec::new();
        let mut saved = Vec::new();
        let mut later = Vec::new();
        for t in drained {
            let mut st = t.state.lock();
            let p = pace(st.entries.len());
            if let Some(record) = st.take_record(&t, &self.node_id, now, p, force) {
                batch.push(record);
                saved.push(t.clone());
            } else if st.queued {
                later.push(t.clone());
            }
        }
        self.queue.lock().extend(later);
        if batch.is_empty() {
            return true;
        }
        let began = Instant::now();
        match self.store.write_file_transfers(Arc::new(batch)).await {
            Ok(()) => {
                metrics::flushed(began.elapsed());
                if std::mem::take(failing) {
                    tracing::info!("file transfer records are being saved again");
                }
                true
            }
            Err(e) => {
                metrics::flush_failed();
                if !std::mem::replace(failing, true) {
                    tracing::warn!(error = %e, "cannot save file transfer records; retrying with the next batch (unsaved transfers stay in memory, polls are served from there)");
                }
                self.unsave(&saved);
                false
            }
        }
    }

    /// Marks transfers of a refused batch unsaved again and requeues them.
    fn unsave(&self, saved: &[Arc<LiveTransfer>]) {
        let mut queue = self.queue.lock();
        for t in saved {
            let mut effect = Effect::default();
            t.state.lock().unsave(&mut effect);
            if effect.enqueue {
                queue.push(t.clone());
            }
        }
    }

    /// Forgets transfers finished more than [`MEMORY_TTL`] ago, and the
    /// oldest finished ones beyond `max_entries`; only saved transfers
    /// leave memory (polls then read the store).
    pub(super) fn evict(&self, now: Instant, max_entries: usize) {
        let mut transfers = self.transfers.write();
        let mut done: Vec<(Instant, usize, String)> = transfers
            .values()
            .filter_map(|t| {
                let st = t.state.lock();
                let at = st.finished_at.filter(|_| !st.queued)?;
                Some((at, st.entries.len(), t.id.clone()))
            })
            .collect();
        done.sort_unstable();
        let mut kept: usize = done.iter().map(|(_, n, _)| n).sum();
        for (at, entries, id) in done {
            if now.saturating_duration_since(at) < MEMORY_TTL && kept <= max_entries {
                break;
            }
            transfers.remove(&id);
            kept -= entries;
        }
    }

    /// Deletes finished records older than `file.retention`.
    async fn prune(&self) {
        let cutoff = gse_core::now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        match self.store.prune_file_transfers(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                transfers = n,
                "pruned file transfer records older than file.retention"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune old file transfer records; will try again in an hour")
            }
        }
    }

    /// Closes the entries this node's last run left unfinished.
    pub(super) async fn recover(&self) -> Result<(), StoreError> {
        let failure = EntryFailure {
            status: STATUS_FAILED,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the transfer; start it again".into(),
            end_ms: gse_core::now_ms(),
        };
        let closed = self
            .store
            .fail_unfinished_file_transfers(&self.node_id, failure)
            .await?;
        if closed > 0 {
            tracing::warn!(
                entries = closed,
                "closed file transfer entries left unfinished when this node last stopped"
            );
        }
        Ok(())
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

//! The writer: saves what changed in batches and keeps memory and the
//! store bounded, for any role that implements [`JobKind`].
//!
//! Every `flush_every` the queued jobs hand their changes to one batch,
//! written to the store in one call: agent frames never wait for the store,
//! and thousands of agents finishing together cost one write. When the store
//! refuses a batch, what it held is marked unsaved again in the jobs
//! themselves (memory stays the only copy) and goes with the next one; a
//! job with unsaved changes never leaves memory, so no result is lost
//! however long the store fails. After each save the role does its own
//! work ([`JobKind::round`]); once a second finished jobs past their
//! memory limits leave ([`Ledger::evict`]); once an hour records older than
//! the retention are pruned. At start, [`recover`] closes the entries the
//! last run left unfinished. At shutdown everything is saved once more.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Ledger, Memory, Resident};

/// How often the role's deadlines are checked and memory is trimmed.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// How often old records are pruned from the store.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A role whose jobs the writer saves.
pub(crate) trait JobKind: Send + Sync + 'static {
    type Job: Resident;
    /// What one write to the store carries.
    type Batch: Default + Send + Sync + 'static;
    /// Why the store refused (the state store's error).
    type Error: std::fmt::Display + Send;
    /// How logs and metrics name this kind of job.
    const NAMES: Names;

    fn ledger(&self) -> &Ledger<Self::Job>;
    fn timing(&self) -> Timing;
    /// Moves what `job` has to save into `batch`: all of it with `force`,
    /// else what its pacing allows now.
    fn take(
        &self,
        job: &Arc<Self::Job>,
        now: Instant,
        force: bool,
        batch: &mut Self::Batch,
    ) -> Take;
    fn is_empty(batch: &Self::Batch) -> bool;
    /// Undoes the takes of a batch the store refused (`taken` holds every
    /// job that added to it); returns the jobs that need a place in the
    /// queue again.
    fn unsave(&self, taken: &[Arc<Self::Job>], batch: &Self::Batch) -> Vec<Arc<Self::Job>>;
    /// Writes one batch, in one transaction.
    fn write(
        &self,
        batch: Arc<Self::Batch>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Deletes finished records created before `created_before_ms`; how
    /// many went.
    fn prune(
        &self,
        created_before_ms: u64,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
    /// Closes the entries this node's last run left unfinished, ending them
    /// at `end_ms`; how many.
    fn fail_unfinished(&self, end_ms: u64)
    -> impl Future<Output = Result<u64, Self::Error>> + Send;
    /// The role's work after each save (cancels, relays, deadlines...).
    fn round(&self, now: Instant, due: Due) -> impl Future<Output = ()> + Send;
}

/// How logs and metrics name a kind of job.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    /// "task", "file transfer".
    pub noun: &'static str,
    /// "tasks", "transfers".
    pub plural: &'static str,
    /// The config key of the records' retention ("task.retention").
    pub retention_key: &'static str,
    /// Histogram of batches written and how long each took.
    pub flush_seconds: &'static str,
    /// Counter of batches the store refused.
    pub store_failures: &'static str,
}

/// The writer's clock for one kind.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often changes are saved.
    pub flush_every: Duration,
    /// How often [`Due::slow`] is set; `None` = never.
    pub slow_every: Option<Duration>,
    pub memory: Memory,
    /// Finished records older than this are pruned from the store.
    pub retention: Duration,
}

/// What became of a job the writer looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Its changes are in the batch; it left the queue.
    Taken,
    /// Its save is not due yet; it stays in the queue.
    Later,
    /// Nothing to save; it left the queue.
    Clean,
}

/// Which of the role's slower checks are due this round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// A [`HOUSEKEEPING_EVERY`] passed: deadlines.
    pub second: bool,
    /// A [`Timing::slow_every`] passed.
    pub slow: bool,
}

/// What the writer carries between rounds.
#[derive(Debug, Default)]
pub struct Writer {
    /// The store is failing (log once, not every round).
    failing: bool,
}

impl Writer {
    /// Whether the last batch was refused.
    #[cfg(test)]
    pub fn failing(&self) -> bool {
        self.failing
    }
}

/// Saves changes and keeps memory in check until `shutdown`, then saves
/// everything once more.
pub async fn run<K: JobKind>(kind: Arc<K>, shutdown: CancellationToken) {
    let timing = kind.timing();
    let mut writer = Writer::default();
    let mut tick = tokio::time::interval(timing.flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = Clock::new(Instant::now());
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        flush(&*kind, stop, &mut writer).await;
        if stop {
            return;
        }
        let now = Instant::now();
        let due = clock.due(now, &timing);
        kind.round(now, due).await;
        if due.second {
            let left = kind.ledger().evict(now, &timing.memory);
            if left > 0 {
                tracing::debug!(
                    left,
                    "finished {} left memory; polls read them from the store",
                    K::NAMES.plural
                );
            }
        }
        if clock.prune_due(Instant::now()) {
            prune(&*kind, timing.retention).await;
        }
    }
}

/// Writes the changes whose save is due (all of them with `force`),
/// including those of a batch that failed before; true when the store took
/// the batch (or there was nothing to save).
pub async fn flush<K: JobKind>(kind: &K, force: bool, writer: &mut Writer) -> bool {
    let now = Instant::now();
    let mut batch = K::Batch::default();
    let (mut taken, mut later) = (Vec::new(), Vec::new());
    for job in kind.ledger().take_queue() {
        match kind.take(&job, now, force, &mut batch) {
            Take::Taken => taken.push(job),
            Take::Later => later.push(job),
            Take::Clean => {}
        }
    }
    kind.ledger().requeue(later);
    if K::is_empty(&batch) {
        return true;
    }
    let batch = Arc::new(batch);
    let began = Instant::now();
    let names = K::NAMES;
    match kind.write(batch.clone()).await {
        Ok(()) => {
            ::metrics::histogram!(names.flush_seconds).record(began.elapsed().as_secs_f64());
            if std::mem::take(&mut writer.failing) {
                tracing::info!("{} records are being saved again", names.noun);
            }
            true
        }
        Err(e) => {
            ::metrics::counter!(names.store_failures).increment(1);
            if !std::mem::replace(&mut writer.failing, true) {
                tracing::warn!(error = %e, "cannot save {} records; retrying with the next batch (unsaved {} stay in memory, polls are served from there)", names.noun, names.plural);
            }
            kind.ledger().requeue(kind.unsave(&taken, &batch));
            false
        }
    }
}

/// Deletes finished records older than `retention` (a job still running,
/// however old, is kept).
pub async fn prune<K: JobKind>(kind: &K, retention: Duration) {
    let names = K::NAMES;
    let cutoff = gse_core::now_ms().saturating_sub(retention.as_millis() as u64);
    match kind.prune(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            records = n,
            "pruned {} records older than {}",
            names.noun,
            names.retention_key
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot prune old {} records; will try again in an hour", names.noun)
        }
    }
}

/// Closes the entries this node's last run left unfinished (at start,
/// before any job of this run exists).
pub async fn recover<K: JobKind>(kind: &K) -> Result<(), K::Error> {
    let closed = kind.fail_unfinished(gse_core::now_ms()).await?;
    if closed > 0 {
        tracing::warn!(
            entries = closed,
            "closed {} entries left unfinished when this node last stopped",
            K::NAMES.noun
        );
    }
    Ok(())
}

/// When the writer's slower steps last ran.
struct Clock {
    housekeeping: Instant,
    slow: Instant,
    pruned: Option<Instant>,
}

impl Clock {
    fn new(now: Instant) -> Self {
        Clock {
            housekeeping: now,
            slow: now,
            pruned: None,
        }
    }

    /// Which checks are due at `now`; those that are start over.
    fn due(&mut self, now: Instant, timing: &Timing) -> Due {
        let second = now.saturating_duration_since(self.housekeeping) >= HOUSEKEEPING_EVERY;
        if second {
            self.housekeeping = now;
        }
        let slow = timing
            .slow_every
            .is_some_and(|every| now.saturating_duration_since(self.slow) >= every);
        if slow {
            self.slow = now;
        }
        Due { second, slow }
    }

    /// Whether pruning is due (at once after start, then every hour).
    fn prune_due(&mut self, now: Instant) -> bool {
        let due = self
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
        if due {
            self.pruned = Some(now);
        }
        due
    }
}

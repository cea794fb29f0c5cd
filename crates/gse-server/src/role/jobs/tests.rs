//! The engine over a fake kind: jobs that count changes, a "store" that
//! records batches and can be told to refuse them. The roles' own tests run
//! the engine against the real embedded store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::writer::{HOUSEKEEPING_EVERY, Writer, flush};
use super::*;

struct FakeJob {
    id: String,
    state: Mutex<FakeState>,
}

struct FakeState {
    book: Book,
    /// Changes not handed to the writer yet.
    pending: u32,
    /// Only saved when forced (a paced job).
    paced: bool,
    bytes: usize,
}

impl Job for FakeJob {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Resident for FakeJob {
    fn standing(&self) -> Standing {
        let st = self.state.lock();
        Standing {
            finished_at: st.book.finished_at(),
            unsaved: st.book.queued(),
            entries: 10,
            bytes: st.bytes,
        }
    }
}

#[derive(Default)]
struct FakeKind {
    ledger: Ledger<FakeJob>,
    refuse: AtomicBool,
    /// Every batch the store took: (job id, changes).
    saved: Mutex<Vec<Vec<(String, u32)>>>,
    rounds: AtomicU32,
    prunes: AtomicU32,
}

impl JobKind for FakeKind {
    type Job = FakeJob;
    type Batch = Vec<(String, u32)>;
    type Error = String;
    const NAMES: Names = Names {
        noun: "fake",
        plural: "fakes",
        retention_key: "fake.retention",
        flush_seconds: "gse_fake_store_flush_seconds",
        store_failures: "gse_fake_store_failures_total",
    };

    fn ledger(&self) -> &Ledger<FakeJob> {
        &self.ledger
    }

    fn timing(&self) -> Timing {
        Timing {
            flush_every: Duration::from_millis(10),
            slow_every: None,
            memory: MEMORY,
            retention: Duration::from_secs(60),
        }
    }

    fn take(&self, job: &Arc<FakeJob>, _: Instant, force: bool, batch: &mut Self::Batch) -> Take {
        let mut st = job.state.lock();
        if st.pending == 0 {
            st.book.leave_queue();
            return Take::Clean;
        }
        if st.paced && !force {
            return Take::Later;
        }
        batch.push((job.id.clone(), std::mem::take(&mut st.pending)));
        st.book.leave_queue();
        Take::Taken
    }

    fn is_empty(batch: &Self::Batch) -> bool {
        batch.is_empty()
    }

    fn unsave(&self, taken: &[Arc<FakeJob>], batch: &Self::Batch) -> Vec<Arc<FakeJob>> {
        let mut again = Vec::new();
        for (job, (_, n)) in taken.iter().zip(batch) {
            let mut st = job.state.lock();
            st.pending += n;
            let mut effect = Effect::default();
            st.book.touch(&mut effect);
            if effect.enqueue {
                again.push(job.clone());
            }
        }
        again
    }

    async fn write(&self, batch: Arc<Self::Batch>) -> Result<(), String> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("refused by the test".to_string());
        }
        self.saved.lock().push((*batch).clone());
        Ok(())
    }

    async fn prune(&self, _: u64) -> Result<u64, String> {
        self.prunes.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    async fn fail_unfinished(&self, _: u64) -> Result<u64, String> {
        Err("down".to_string())
    }

    async fn round(&self, _: Instant, _: Due) {
        self.rounds.fetch_add(1, Ordering::SeqCst);
    }
}

const MEMORY: Memory = Memory {
    ttl: Duration::from_secs(600),
    max_entries: usize::MAX,
    max_bytes: usize::MAX,
};

impl FakeKind {
    /// A new job with `open` open entries and one change, registered.
    fn add(&self, id: &str, open: usize, paced: bool) -> Arc<FakeJob> {
        let job = Arc::new(FakeJob {
            id: id.into(),
            state: Mutex::new(FakeState {
                book: Book::new(open),
                pending: 1,
                paced,
                bytes: 0,
            }),
        });
        self.ledger.register(&job, open > 0);
        job
    }

    /// One more change to `job`, or its entry ending.
    fn change(&self, job: &Arc<FakeJob>, finish: bool) -> Effect {
        let mut effect = Effect::default();
        {
            let mut st = job.state.lock();
            st.pending += 1;
            if finish {
                st.book.entry_final(0, &mut effect);
            }
            st.book.touch(&mut effect);
        }
        self.ledger.settle(job, &effect);
        effect
    }

    fn saved_total(&self, id: &str) -> u32 {
        let saved = self.saved.lock();
        saved
            .iter()
            .flatten()
            .filter(|(j, _)| j == id)
            .map(|(_, n)| n)
            .sum()
    }
}

#[tokio::test]
async fn changes_of_every_job_go_in_one_batch_and_a_refused_one_goes_again() {
    let kind = FakeKind::default();
    let a = kind.add("a", 1, false);
    kind.add("b", 1, false);
    let mut w = Writer::default();
    assert!(flush(&kind, false, &mut w).await);
    assert_eq!(kind.saved.lock().len(), 1, "one write for both");
    assert!(flush(&kind, false, &mut w).await, "nothing left");
    assert_eq!(kind.saved.lock().len(), 1);

    kind.refuse.store(true, Ordering::SeqCst);
    kind.change(&a, false);
    assert!(!flush(&kind, false, &mut w).await);
    kind.change(&a, true);
    assert!(!flush(&kind, false, &mut w).await);
    assert_eq!(
        kind.ledger.evict(Instant::now() + MEMORY.ttl * 2, &MEMORY),
        0
    );
    assert_eq!(kind.ledger.counts(), (2, 1), "a is finished but unsaved");
    kind.refuse.store(false, Ordering::SeqCst);
    assert!(flush(&kind, false, &mut w).await);
    assert_eq!(kind.saved_total("a"), 3, "every change arrives once");
    assert_eq!(kind.ledger.evict(Instant::now() + MEMORY.ttl, &MEMORY), 1);
    assert!(kind.ledger.get("a").is_none());
    assert!(kind.ledger.get("b").is_some(), "a running job stays");
}

#[tokio::test]
async fn a_paced_job_waits_in_the_queue_until_forced() {
    let kind = FakeKind::default();
    kind.add("p", 1, true);
    let mut w = Writer::default();
    assert!(flush(&kind, false, &mut w).await);
    assert_eq!(kind.saved_total("p"), 0);
    assert!(flush(&kind, true, &mut w).await);
    assert_eq!(kind.saved_total("p"), 1);
}

#[tokio::test]
async fn the_oldest_finished_jobs_leave_first_beyond_the_limits() {
    let kind = FakeKind::default();
    let old = kind.add("old", 0, false);
    let new = kind.add("new", 0, false);
    let running = kind.add("running", 1, false);
    running.state.lock().bytes = 50;
    old.state.lock().bytes = 100;
    new.state.lock().bytes = 100;
    assert!(flush(&kind, false, &mut Writer::default()).await);
    let now = Instant::now();
    let limit = |max_entries, max_bytes| Memory {
        max_entries,
        max_bytes,
        ..MEMORY
    };
    assert_eq!(kind.ledger.evict(now, &limit(20, 250)), 0, "within both");
    assert_eq!(
        kind.ledger.evict(now, &limit(20, 249)),
        1,
        "bytes count running jobs"
    );
    assert!(kind.ledger.get("old").is_none() && kind.ledger.get("new").is_some());
    assert_eq!(kind.ledger.evict(now, &limit(9, usize::MAX)), 1);
    assert_eq!(kind.ledger.counts(), (1, 1));
    drop(new);
}

#[tokio::test]
async fn the_loop_prunes_at_start_works_each_round_and_saves_at_shutdown() {
    let kind = Arc::new(FakeKind::default());
    kind.add("paced", 1, true);
    let stop = CancellationToken::new();
    let loop_ = tokio::spawn(run(kind.clone(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while kind.rounds.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the writer never ran a round");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        kind.prunes.load(Ordering::SeqCst),
        1,
        "pruned once at start"
    );
    assert_eq!(kind.saved_total("paced"), 0, "not due while running");
    stop.cancel();
    loop_.await.unwrap();
    assert_eq!(kind.saved_total("paced"), 1, "saved at shutdown");
    assert!(HOUSEKEEPING_EVERY > kind.timing().flush_every);
}

#[tokio::test]
async fn recover_reports_the_store_failing() {
    let kind = FakeKind::default();
    assert!(recover(&kind).await.is_err());
}

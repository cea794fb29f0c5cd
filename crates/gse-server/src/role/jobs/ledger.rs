//! The live ledger: every job in memory by id, the jobs with open entries,
//! and the queue the worker takes its work from.
//!
//! Three maps behind their own locks, never held together except by
//! [`Ledger::evict`] (jobs, then each job's own lock) and
//! [`Ledger::remove`] (jobs, then open jobs): agents' frames look a job up
//! with one read lock, disconnects and deadlines walk a snapshot of the
//! open jobs. Only the worker takes jobs out of memory, so a job the worker
//! drained is still here when it puts it back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{Effect, Job, Resident};

/// Jobs in memory.
pub struct Ledger<J> {
    /// Running jobs and those finished recently.
    jobs: RwLock<HashMap<String, Arc<J>>>,
    /// Jobs with open entries (disconnects and deadlines look here).
    open: Mutex<HashMap<String, Arc<J>>>,
    /// Jobs the worker must look at: changes not saved yet (task, file),
    /// or work not dispatched yet (proc).
    queue: Mutex<Vec<Arc<J>>>,
}

/// Where a job stands, for [`Ledger::evict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// When its last entry became final; `None` while one is open.
    pub finished_at: Option<Instant>,
    /// It has changes not saved yet: it stays in memory, the only copy.
    pub unsaved: bool,
    /// Entries it holds.
    pub entries: usize,
    /// Bytes it holds beyond its entries (task logs).
    pub bytes: usize,
}

/// How long finished jobs stay in memory, and how much of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// A finished job leaves memory this long after its last entry ended.
    pub ttl: Duration,
    /// Most entries of finished jobs kept; beyond it the oldest leave early.
    pub max_entries: usize,
    /// Most bytes of every job (running ones too) kept; beyond it the
    /// oldest finished jobs leave early.
    pub max_bytes: usize,
}

impl<J> Default for Ledger<J> {
    fn default() -> Self {
        Ledger {
            jobs: RwLock::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            queue: Mutex::new(Vec::new()),
        }
    }
}

// === impl Ledger ===

impl<J: Job> Ledger<J> {
    /// The job, if it is in memory.
    pub fn get(&self, id: &str) -> Option<Arc<J>> {
        self.jobs.read().get(id).cloned()
    }

    /// Makes a new job visible to frames and polls (`open`: to disconnects
    /// and deadlines too) and puts it in the worker's queue.
    pub fn register(&self, job: &Arc<J>, open: bool) {
        self.insert(job);
        if open {
            self.open(job);
        }
        self.enqueue(job);
    }

    /// Makes a job visible to frames and polls.
    pub fn insert(&self, job: &Arc<J>) {
        self.jobs.write().insert(job.id().to_string(), job.clone());
    }

    /// Makes a job visible to disconnects and deadlines.
    pub fn open(&self, job: &Arc<J>) {
        self.open.lock().insert(job.id().to_string(), job.clone());
    }

    /// Puts a job in the worker's queue.
    pub fn enqueue(&self, job: &Arc<J>) {
        self.queue.lock().push(job.clone());
    }

    /// Acts on what a change did to `job`; true when it finished the job.
    pub fn settle(&self, job: &Arc<J>, effect: &Effect) -> bool {
        if effect.enqueue {
            self.enqueue(job);
        }
        if effect.done {
            self.close(job.id());
        }
        effect.done
    }

    /// The job has nothing open any more.
    pub fn close(&self, id: &str) {
        self.open.lock().remove(id);
    }

    /// The jobs with open entries now.
    pub fn open_jobs(&self) -> Vec<Arc<J>> {
        self.open.lock().values().cloned().collect()
    }

    /// Takes the worker's queue.
    pub fn take_queue(&self) -> Vec<Arc<J>> {
        std::mem::take(&mut *self.queue.lock())
    }

    /// Puts jobs back in the worker's queue.
    pub fn requeue(&self, jobs: Vec<Arc<J>>) {
        if !jobs.is_empty() {
            self.queue.lock().extend(jobs);
        }
    }

    /// Forgets a job, open or not.
    pub fn remove(&self, id: &str) {
        let mut jobs = self.jobs.write();
        jobs.remove(id);
        self.open.lock().remove(id);
    }

    /// Jobs in memory, and those with open entries.
    pub fn counts(&self) -> (usize, usize) {
        (self.jobs.read().len(), self.open.lock().len())
    }
}

impl<J: Resident> Ledger<J> {
    /// Forgets jobs finished more than `memory.ttl` before `now`, and the
    /// oldest finished ones beyond `memory.max_entries` or
    /// `memory.max_bytes`; only jobs whose changes are all saved leave.
    /// Returns how many left.
    pub fn evict(&self, now: Instant, memory: &Memory) -> usize {
        let mut jobs = self.jobs.write();
        let mut bytes = 0;
        // (finished at, entries, bytes, id) of every saved, finished job.
        let mut done: Vec<(Instant, usize, usize, String)> = Vec::new();
        for job in jobs.values() {
            let s = job.standing();
            bytes += s.bytes;
            if let Some(at) = s.finished_at.filter(|_| !s.unsaved) {
                done.push((at, s.entries, s.bytes, job.id().to_string()));
            }
        }
        done.sort_unstable();
        let mut kept: usize = done.iter().map(|(_, n, _, _)| n).sum();
        let before = jobs.len();
        for (at, entries, held, id) in done {
            let expired = now.saturating_duration_since(at) >= memory.ttl;
            if !expired && kept <= memory.max_entries && bytes <= memory.max_bytes {
                break;
            }
            jobs.remove(&id);
            kept -= entries;
            bytes -= held;
        }
        before - jobs.len()
    }
}

//! The bookkeeping every stored job keeps beside its entries: how many are
//! still open, whether the job waits in the writer's queue, and when its
//! last entry became final; and the [`Effect`] a change reports.
//!
//! A job's state changes under its own lock; what the change means for the
//! ledger (a place in the writer's queue, leaving the open jobs) is acted on
//! after the lock is released, through [`super::Ledger::settle`].

use std::time::Instant;

/// Open entries, queue membership and finish time of one job.
#[derive(Debug)]
pub struct Book {
    /// Entries not final yet.
    unfinished: usize,
    /// The job is in the writer's queue.
    queued: bool,
    /// When the last entry became final.
    finished_at: Option<Instant>,
}

/// What a change did to a job, for the caller to act on after unlocking.
#[derive(Debug, Default, PartialEq)]
pub struct Effect {
    /// The job needs a place in the writer's queue.
    pub enqueue: bool,
    /// The code (task: status, file: error code) of each entry this change
    /// made final, for the role's metrics.
    pub finals: Vec<i32>,
    /// The job's last open entry became final.
    pub done: bool,
}

// === impl Book ===

impl Book {
    /// A new job with `unfinished` open entries, in the writer's queue (it
    /// has never been saved); finished now when nothing is open.
    pub fn new(unfinished: usize) -> Self {
        Book {
            unfinished,
            queued: true,
            finished_at: (unfinished == 0).then(Instant::now),
        }
    }

    /// Entries not final yet.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Whether the job waits in the writer's queue (it has unsaved changes,
    /// or a save that is not due yet).
    pub fn queued(&self) -> bool {
        self.queued
    }

    /// When the last entry became final; `None` while one is open.
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished_at
    }

    /// Something changed that must be saved: the job asks for a place in
    /// the writer's queue unless it has one.
    pub fn touch(&mut self, effect: &mut Effect) {
        if !self.queued {
            self.queued = true;
            effect.enqueue = true;
        }
    }

    /// An open entry became final with `code`; the job is done when it was
    /// the last one.
    pub fn entry_final(&mut self, code: i32, effect: &mut Effect) {
        self.unfinished -= 1;
        effect.finals.push(code);
        if self.unfinished == 0 {
            self.finished_at = Some(Instant::now());
            effect.done = true;
        }
    }

    /// The writer took what there was to save (or found nothing): the job
    /// leaves its queue.
    pub fn leave_queue(&mut self) {
        self.queued = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_queued_once_and_done_with_its_last_entry() {
        let mut book = Book::new(2);
        assert!(book.queued() && book.finished_at().is_none());
        let mut effect = Effect::default();
        book.touch(&mut effect);
        assert!(!effect.enqueue, "a new job is in the queue already");
        book.leave_queue();
        book.entry_final(3, &mut effect);
        book.touch(&mut effect);
        book.touch(&mut effect);
        assert_eq!((effect.enqueue, effect.done), (true, false));
        let mut last = Effect::default();
        book.entry_final(4, &mut last);
        assert_eq!((last.finals, last.done), (vec![4], true));
        assert!(book.finished_at().is_some());
        assert_eq!(book.unfinished(), 0);
        assert!(Book::new(0).finished_at().is_some(), "nothing open: done");
    }
}

//! The job engine the task, file and proc roles share: live jobs in memory
//! and the worker that saves them.
//!
//! Start at [`Ledger`]: every job in memory by id, the ones with open
//! entries (disconnects and deadlines look there), and the queue of jobs
//! the worker must look at. Each job's state carries a [`Book`] (open
//! entries, queued, finished when) and every change reports an [`Effect`]
//! the role settles on the ledger. A role whose jobs are stored implements
//! [`JobKind`] (its batch type, how a job's changes go into a batch and
//! back out of a refused one, its store calls) and [`writer::run`] does the
//! rest: saves in batches, forgets finished jobs after a while, prunes old
//! records, and closes at start what the last run left unfinished.
//!
//! The engine never reaches an agent: the roles send through the node's
//! `cluster::sender::Sender` and keep the deliveries it returns, and the
//! roles' work between saves
//! (deadlines, cancels, relays) runs in [`JobKind::round`].

mod book;
mod ledger;
pub mod writer;

#[cfg(test)]
mod tests;

pub use book::{Book, Effect};
pub use ledger::{Ledger, Memory, Standing};
pub(crate) use writer::{Due, JobKind, Names, Take, Timing, recover, run};

/// A job the [`Ledger`] holds.
pub trait Job: Send + Sync + 'static {
    /// Its id (`GSETASK:...`), unique on this node.
    fn id(&self) -> &str;
}

/// A job that leaves memory once it is finished and saved: what
/// [`Ledger::evict`] needs to know of it.
pub trait Resident: Job {
    /// Where the job stands now (read under its own lock).
    fn standing(&self) -> Standing;
}

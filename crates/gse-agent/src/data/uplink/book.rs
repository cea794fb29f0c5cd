//! The uplink's bookkeeping, without I/O: which batches wait in memory,
//! which are in flight on the data link, which wait to be retried after a
//! refusing ack, and how far the spool may be acknowledged.
//!
//! The spool acknowledges only a contiguous prefix, while the DataServer
//! acks in any order; so spool batches acked early are remembered in
//! `spool_acked` and the spool is acked up to just below the oldest spool
//! batch still outstanding. After a lost link the spool is read again from
//! its head, skipping what is already known to be acked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::stored::{Origin, Pending};
use crate::data::spool::SeqNo;

/// First retry delay after a refusing ack; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// What an ack changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// The batch was known and stored (code 0).
    pub stored: Option<usize>,
    /// The spool can now be acked up to here.
    pub spool_ack: Option<SeqNo>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Book {
    queue: VecDeque<Pending>,
    retry: VecDeque<(Instant, Pending)>,
    inflight: BTreeMap<u64, (Instant, Pending)>,
    mem_bytes: u64,
    /// Last spool entry read in this link's epoch.
    spool_cursor: Option<SeqNo>,
    /// The spool may hold entries past the cursor.
    spool_more: bool,
    spool_outstanding: BTreeSet<SeqNo>,
    spool_acked: BTreeSet<SeqNo>,
    spool_acked_to: Option<SeqNo>,
    retry_delay: Option<Duration>,
}

// === impl Book ===

impl Book {
    pub fn new() -> Book {
        Book {
            spool_more: true,
            ..Book::default()
        }
    }

    /// Bytes of memory-only batches (waiting, retrying or in flight).
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Nothing waits in memory or in flight.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.retry.is_empty() && self.inflight.is_empty()
    }

    /// Whether a memory batch of `bytes` fits under `max`.
    pub fn fits(&self, bytes: usize, max: u64) -> bool {
        self.mem_bytes == 0 || self.mem_bytes + bytes as u64 <= max
    }

    pub fn push_memory(&mut self, p: Pending) {
        debug_assert_eq!(p.origin, Origin::Memory);
        self.mem_bytes += p.bytes as u64;
        self.queue.push_back(p);
    }

    /// A retry whose time has come, if any.
    pub fn take_due_retry(&mut self, now: Instant) -> Option<Pending> {
        match self.retry.front() {
            Some((at, _)) if *at <= now => self.retry.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    /// When the next retry is due.
    #[cfg(test)]
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry.front().map(|(at, _)| *at)
    }

    pub fn wants_spool(&self) -> bool {
        self.spool_more
    }

    pub fn spool_cursor(&self) -> Option<SeqNo> {
        self.spool_cursor
    }

    /// New entries were pushed to the spool.
    pub fn spool_grew(&mut self) {
        self.spool_more = true;
    }

    /// Takes what a spool read returned: `last` is the last entry read,
    /// `read < asked` means the spool is exhausted for now. Returns the
    /// batches to send (those not acked already) and maybe a new spool ack
    /// point (when everything read was acked before).
    pub fn take_spooled(
        &mut self,
        batches: Vec<Pending>,
        last: Option<SeqNo>,
        read: usize,
        asked: usize,
    ) -> (Vec<Pending>, Option<SeqNo>) {
        if read < asked {
            self.spool_more = false;
        }
        if last.is_some() {
            self.spool_cursor = last;
        }
        let mut send = Vec::new();
        for p in batches {
            let Origin::Spool(at) = p.origin else {
                continue;
            };
            if self.spool_acked.contains(&at) {
                continue;
            }
            self.spool_outstanding.insert(at);
            send.push(p);
        }
        (send, self.spool_ack_point())
    }

    /// The next memory batch to send.
    pub fn pop_memory(&mut self) -> Option<Pending> {
        self.queue.pop_front()
    }

    /// Records that `p` was written to the link.
    pub fn sent(&mut self, p: Pending, now: Instant) {
        self.inflight.insert(p.seq, (now, p));
    }

    /// Handles the DataServer's ack for `seq`.
    pub fn on_ack(&mut self, seq: u64, code: u32, now: Instant) -> AckOutcome {
        let Some((_, p)) = self.inflight.remove(&seq) else {
            return AckOutcome::default();
        };
        if code != 0 {
            let delay = self
                .retry_delay
                .map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
            self.retry_delay = Some(delay);
            self.retry.push_back((now + delay, p));
            return AckOutcome::default();
        }
        self.retry_delay = None;
        let records = p.records;
        let spool_ack = match p.origin {
            Origin::Memory => {
                self.mem_bytes -= p.bytes as u64;
                None
            }
            Origin::Spool(at) => {
                self.spool_outstanding.remove(&at);
                self.spool_acked.insert(at);
                self.spool_ack_point()
            }
        };
        AckOutcome {
            stored: Some(records),
            spool_ack,
        }
    }

    /// How long the oldest batch in flight has waited for its ack.
    pub fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.inflight
            .values()
            .map(|(at, _)| now.saturating_duration_since(*at))
            .max()
    }

    /// The link is gone. Spool batches will be read again from the spool;
    /// memory batches are returned in seq order, to be spooled (`keep_memory`
    /// false) or else kept in memory to go first on the next link.
    pub fn reset_link(&mut self, keep_memory: bool) -> Vec<Pending> {
        let mut memory: Vec<Pending> = Vec::new();
        let inflight = std::mem::take(&mut self.inflight);
        for (_, (_, p)) in inflight {
            if p.origin == Origin::Memory {
                memory.push(p);
            }
        }
        self.spool_outstanding.clear();
        self.spool_cursor = None;
        self.spool_more = true;
        self.retry.retain(|(_, p)| p.origin == Origin::Memory);
        if keep_memory {
            memory.sort_by_key(|p| p.seq);
            for p in memory.into_iter().rev() {
                self.queue.push_front(p);
            }
            return Vec::new();
        }
        memory.extend(self.retry.drain(..).map(|(_, p)| p));
        memory.extend(self.queue.drain(..));
        memory.sort_by_key(|p| p.seq);
        self.mem_bytes = 0;
        memory
    }

    /// The spool may be acked up to just below the oldest outstanding spool
    /// batch, or up to the cursor when none is outstanding.
    fn spool_ack_point(&mut self) -> Option<SeqNo> {
        let point = match self.spool_outstanding.first() {
            Some(first) => first.0.checked_sub(1).map(SeqNo),
            None => self.spool_cursor,
        }?;
        if self.spool_acked_to.is_some_and(|done| done >= point) {
            return None;
        }
        if self.spool_outstanding.is_empty() && self.spool_cursor == Some(point) {
            // Everything read is acked.
        } else if self.spool_acked.range(..=point).next().is_none() {
            return None;
        }
        self.spool_acked_to = Some(point);
        self.spool_acked = self.spool_acked.split_off(&SeqNo(point.0 + 1));
        Some(point)
    }
}

#[cfg(test)]
mod tests;

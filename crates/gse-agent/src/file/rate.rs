//! Speed caps (C4): bytes per second shared by everything that holds the
//! same [`RateLimit`]: one agent-wide per direction (`[file]
//! upload_speed_mb`, `download_speed_mb`) and one per task and direction
//! (the transfer's own caps). [`Limits`] applies several at once.
//!
//! Written by hand rather than with `governor`: pieces are 1-4 MiB, and
//! governor's cells are fixed-size units with a burst that must hold the
//! largest request, while we want byte-exact accounting for requests of any
//! size, a reservation that can be handed back (a piece answered "busy" was
//! never sent), and one reservation across two limits. This is the GCRA
//! idea in a few lines: each limit remembers when it is next free; a
//! reservation of `n` bytes starts then (or now, if that is past) and moves
//! it `n / rate` later. Idle time earns no credit, so the cap holds over any
//! window longer than one piece.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// One cap, shared by its holders.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_s: u64,
    next_free: Mutex<Instant>,
}

// === impl RateLimit ===

impl RateLimit {
    /// A cap of `bytes_per_s`; `None` for 0 (unlimited).
    pub fn new(bytes_per_s: u64) -> Option<Arc<Self>> {
        (bytes_per_s > 0).then(|| {
            Arc::new(RateLimit {
                bytes_per_s,
                next_free: Mutex::new(Instant::now()),
            })
        })
    }

    pub fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s
    }

    fn cost(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64)
    }

    /// Books `bytes`; returns when they may go.
    fn reserve(&self, bytes: u64, now: Instant) -> Instant {
        let mut next = self.next_free.lock();
        let start = (*next).max(now);
        *next = start + self.cost(bytes);
        start
    }

    /// Hands back a reservation of `bytes` that was not used.
    fn refund(&self, bytes: u64, now: Instant) {
        let mut next = self.next_free.lock();
        *next = next.checked_sub(self.cost(bytes)).unwrap_or(now).max(now);
    }
}

/// The caps that apply to one flow of bytes (e.g. task + agent-wide).
#[derive(Clone, Debug, Default)]
pub struct Limits(Vec<Arc<RateLimit>>);

// === impl Limits ===

impl Limits {
    pub fn new(limits: impl IntoIterator<Item = Option<Arc<RateLimit>>>) -> Self {
        Limits(limits.into_iter().flatten().collect())
    }

    pub fn is_unlimited(&self) -> bool {
        self.0.is_empty()
    }

    /// Books `bytes` on every cap; returns when they may go (the latest of
    /// the caps' answers).
    pub fn reserve(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        self.0
            .iter()
            .map(|l| l.reserve(bytes, now))
            .max()
            .unwrap_or(now)
    }

    /// How far ahead the caps are booked already: a new reservation would
    /// wait this long.
    pub fn booked_ahead(&self) -> Duration {
        let now = Instant::now();
        self.0
            .iter()
            .map(|l| l.next_free.lock().saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    /// Hands back a reservation that was not used.
    pub fn refund(&self, bytes: u64) {
        let now = Instant::now();
        for l in &self.0 {
            l.refund(bytes, now);
        }
    }

    /// Books `bytes` and waits until they may go.
    pub async fn acquire(&self, bytes: u64) {
        if !self.is_unlimited() {
            tokio::time::sleep_until(self.reserve(bytes)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited() {
        assert!(RateLimit::new(0).is_none());
        let limits = Limits::new([RateLimit::new(0)]);
        assert!(limits.is_unlimited());
        let now = Instant::now();
        assert!(limits.reserve(1 << 30) <= now + Duration::from_millis(5));
    }

    #[test]
    fn reservations_are_spaced_by_the_slowest_cap() {
        let fast = RateLimit::new(1000);
        let slow = RateLimit::new(100);
        let limits = Limits::new([fast, slow]);
        let t0 = limits.reserve(100);
        let t1 = limits.reserve(100);
        let t2 = limits.reserve(100);
        assert!(t1 - t0 >= Duration::from_millis(999), "{:?}", t1 - t0);
        assert!(t2 - t1 >= Duration::from_millis(999));
        limits.refund(100);
        let t3 = limits.reserve(100);
        assert!(
            t3 - t2 < Duration::from_millis(1001),
            "refund gave the slot back"
        );
    }
}

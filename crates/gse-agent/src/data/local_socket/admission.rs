//! Who may hold what on a local socket: [`Admission::accept`] hands out
//! connections, each with a [`Slot`].
//!
//! - At most `max_connections` connections at once (all users); further
//!   clients wait in the listen backlog.
//! - At most `max_connections_per_uid` of one non-root uid (SO_PEERCRED);
//!   its further connections are closed as soon as they are accepted, so
//!   one local user holding thousands of connections never locks the
//!   others out. Root is trusted (DESIGN "Trust") and only counts against
//!   the global cap. Refusals are logged at most once per
//!   [`REFUSAL_LOG_EVERY`], with their count and the key to raise.
//! - Unfinished frames larger than [`FREE_FRAME_BYTES`] are buffered only
//!   within a byte budget ([`Slot::reserve`]): [`UID_BUFFER_FRAMES`] largest
//!   frames per uid and [`TOTAL_BUFFER_FRAMES`] in all, so frames that claim
//!   a huge body and never finish cannot grow the agent; a frame waits for
//!   room (bounded by the idle timeout) instead.
//!
//! What it does not bound: complete records already handed to the batcher
//! (those are the data path's backpressure, `data.memory_max_mb`).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::peer_of;
use crate::data::ipc_codec::Peer;

/// A frame up to this size (header included) needs no budget: about one
/// read's worth, what every connection may hold anyway.
pub const FREE_FRAME_BYTES: usize = 64 * 1024;
/// Largest frames one uid's unfinished frames may add up to.
pub const UID_BUFFER_FRAMES: usize = 2;
/// Largest frames all unfinished frames may add up to.
pub const TOTAL_BUFFER_FRAMES: usize = 4;
/// Least time between two log lines about refused connections.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits of one socket (from its config section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub idle_timeout: Duration,
    /// Largest frame the protocol takes, header included.
    pub max_frame: usize,
}

/// Names for log lines: the socket and the keys an operator would change.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    pub socket: &'static str,
    pub per_uid_key: &'static str,
}

/// Hands out connections within the limits; cheap to clone.
#[derive(Clone)]
pub struct Admission(Arc<Inner>);

struct Inner {
    names: Names,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    uids: Mutex<HashMap<u32, UidUse>>,
    buffer: Arc<Semaphore>,
    refused: AtomicU64,
    refused_unlogged: AtomicU64,
    last_log_ms: AtomicU64,
}

/// One uid's open connections and unfinished-frame budget.
struct UidUse {
    conns: usize,
    buffer: Arc<Semaphore>,
}

/// An accepted connection, its sender, and its place in the limits.
pub struct Conn {
    pub stream: UnixStream,
    pub peer: Peer,
    pub slot: Slot,
}

/// Holds a connection's place; frees it on drop.
pub struct Slot {
    inner: Arc<Inner>,
    uid: u32,
    buffer: Arc<Semaphore>,
    _permit: OwnedSemaphorePermit,
}

/// Room for one unfinished frame; released on drop.
#[derive(Debug)]
pub struct FramePermit {
    /// The frame length it was asked for.
    pub len: usize,
    _uid: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

// === impl Admission ===

impl Admission {
    pub fn new(names: Names, limits: ConnLimits) -> Admission {
        let frame = limits.max_frame.max(FREE_FRAME_BYTES);
        Admission(Arc::new(Inner {
            names,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            uids: Mutex::default(),
            buffer: Arc::new(Semaphore::new(frame * TOTAL_BUFFER_FRAMES)),
            limits,
            refused: AtomicU64::new(0),
            refused_unlogged: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
        }))
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.0.limits
    }

    /// Connections refused over the per-uid cap so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Waits for a free slot and then a connection whose uid is within its
    /// cap; connections over it are closed on the spot.
    pub async fn accept(&self, listener: &UnixListener) -> io::Result<Conn> {
        loop {
            let permit = self
                .0
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, _) = listener.accept().await?;
            let peer = peer_of(&stream);
            match self.admit(peer, permit) {
                Some(slot) => return Ok(Conn { stream, peer, slot }),
                None => {
                    drop(stream);
                    self.note_refused(peer);
                }
            }
        }
    }

    fn admit(&self, peer: Peer, permit: OwnedSemaphorePermit) -> Option<Slot> {
        // An unknown sender shares one bucket with the other unknowns.
        let uid = peer.uid.unwrap_or(u32::MAX);
        let inner = &self.0;
        let mut uids = inner.uids.lock();
        let per_uid_budget = inner.limits.max_frame.max(FREE_FRAME_BYTES) * UID_BUFFER_FRAMES;
        let entry = uids.entry(uid).or_insert_with(|| UidUse {
            conns: 0,
            buffer: Arc::new(Semaphore::new(per_uid_budget)),
        });
        if uid != 0 && entry.conns >= inner.limits.max_connections_per_uid {
            return None;
        }
        entry.conns += 1;
        Some(Slot {
            inner: inner.clone(),
            uid,
            buffer: entry.buffer.clone(),
            _permit: permit,
        })
    }

    /// Counts a refusal; logs the count at most once per
    /// [`REFUSAL_LOG_EVERY`].
    fn note_refused(&self, peer: Peer) {
        let inner = &self.0;
        inner.refused.fetch_add(1, Ordering::Relaxed);
        inner.refused_unlogged.fetch_add(1, Ordering::Relaxed);
        let now = gse_core::now_ms();
        let last = inner.last_log_ms.load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        if now.saturating_sub(last) < every
            || inner
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let count = inner.refused_unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            socket = inner.names.socket,
            %peer,
            refused = count,
            limit = inner.limits.max_connections_per_uid,
            "closed {count} connection(s) of a local user over {} = {} (the latest from {peer}); \
             further refusals are logged at most every {REFUSAL_LOG_EVERY:?}",
            inner.names.per_uid_key,
            inner.limits.max_connections_per_uid,
        );
    }
}

// === impl Slot ===

impl Slot {
    /// Room to buffer an unfinished frame of `len` bytes: first within its
    /// uid's budget, then within the total (both queues are first come,
    /// first served). What is taken is capped at one largest frame.
    pub async fn reserve(&self, len: usize) -> FramePermit {
        let capped = len.min(self.inner.limits.max_frame.max(FREE_FRAME_BYTES));
        let n = u32::try_from(capped).unwrap_or(u32::MAX);
        let uid = self.buffer.clone().acquire_many_owned(n).await;
        let total = self.inner.buffer.clone().acquire_many_owned(n).await;
        FramePermit {
            len,
            _uid: uid.expect("the semaphore is never closed"),
            _total: total.expect("the semaphore is never closed"),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut uids = self.inner.uids.lock();
        if let Some(u) = uids.get_mut(&self.uid) {
            u.conns -= 1;
            if u.conns == 0 {
                uids.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_uid: usize) -> Admission {
        Admission::new(
            Names {
                socket: "test socket",
                per_uid_key: "test.max_connections_per_uid",
            },
            ConnLimits {
                max_connections: 8,
                max_connections_per_uid: per_uid,
                idle_timeout: Duration::from_secs(1),
                max_frame: 1 << 20,
            },
        )
    }

    fn slot(a: &Admission, uid: u32) -> Option<Slot> {
        let permit = a.0.slots.clone().try_acquire_owned().unwrap();
        a.admit(
            Peer {
                pid: Some(1),
                uid: Some(uid),
            },
            permit,
        )
    }

    #[test]
    fn a_user_is_capped_but_root_and_others_are_not() {
        let a = admission(2);
        let held: Vec<_> = (0..2).map(|_| slot(&a, 65534).unwrap()).collect();
        assert!(slot(&a, 65534).is_none(), "a third connection of one user");
        let others = [slot(&a, 1000), slot(&a, 0), slot(&a, 0), slot(&a, 0)];
        assert!(
            others.iter().all(Option::is_some),
            "root and others still admitted"
        );
        drop(held);
        let again = slot(&a, 65534);
        assert!(again.is_some(), "closing frees the user's places");
        assert_eq!(a.0.uids.lock().get(&65534).map(|u| u.conns), Some(1));
        drop(again);
        assert!(
            a.0.uids.lock().get(&65534).is_none(),
            "a user's entry goes with its last connection"
        );
    }

    #[tokio::test]
    async fn unfinished_frames_share_a_bounded_budget_per_user() {
        let a = admission(4);
        let frame = 1 << 20;
        let s1 = slot(&a, 7).unwrap();
        let s2 = slot(&a, 7).unwrap();
        let s3 = slot(&a, 7).unwrap();
        let held = [s1.reserve(frame).await, s2.reserve(frame).await];
        // The user's two frames are buffered; a third waits for room.
        let third = tokio::time::timeout(Duration::from_millis(100), s3.reserve(frame)).await;
        assert!(
            third.is_err(),
            "a third unfinished frame of one user got room"
        );
        // Another user still has room.
        let other = slot(&a, 8).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), other.reserve(frame)).await;
        assert!(got.is_ok());
        drop(held);
        let third = tokio::time::timeout(Duration::from_secs(1), s3.reserve(frame)).await;
        assert_eq!(third.expect("room once a frame is done").len, frame);
    }
}

//! Who may hold what on a local socket: [`Admission::accept`] hands out
//! connections, each with a [`Slot`].
//!
//! - At most `max_connections` connections at once (all users); further
//!   clients wait in the listen backlog.
//! - At most `max_connections_per_uid` of one non-root uid (SO_PEERCRED),
//!   and at most `max_connections - root_reserve` of all non-root uids
//!   together: further connections are closed as soon as they are
//!   accepted, so one local user holding thousands of connections never
//!   locks the others out, and a few users holding their whole share never
//!   lock root's collectors out. Root is trusted (DESIGN "Trust") and only
//!   counts against the global cap. Refusals are logged at most once per
//!   [`REFUSAL_LOG_EVERY`], with their count and the key to raise.
//! - Records are handed on by turns of uid ([`Slot::send`]): each uid has
//!   at most one connection waiting on the (first come, first served)
//!   channel at a time, so when the consumer is the bottleneck every uid
//!   with records gets one hand-over per round, however many connections
//!   it floods on.
//! - Unfinished frames larger than [`FREE_FRAME_BYTES`] are buffered only
//!   within a byte budget ([`Slot::reserve`]): [`UID_BUFFER_FRAMES`] largest
//!   frames per uid and [`TOTAL_BUFFER_FRAMES`] in all, so frames that claim
//!   a huge body and never finish cannot grow the agent; a frame waits for
//!   room (bounded by the idle timeout) instead.
//!
//! What it does not bound: complete records already handed to the batcher
//! (those are the data path's backpressure, `data.memory_max_mb`); turns
//! share hand-overs, not bytes, and a flooding uid still gets its turn.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{self, error::SendError, error::TrySendError};
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
    /// Connections only root may take: non-root uids together hold at
    /// most `max_connections - root_reserve`.
    pub root_reserve: usize,
    pub idle_timeout: Duration,
    /// Largest frame the protocol takes, header included.
    pub max_frame: usize,
}

/// Names for log lines: the socket and the keys an operator would change.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    pub socket: &'static str,
    pub per_uid_key: &'static str,
    /// What sets `root_reserve` (a key, or how it is derived).
    pub reserve_key: &'static str,
}

/// Hands out connections within the limits; cheap to clone.
#[derive(Clone)]
pub struct Admission(Arc<Inner>);

struct Inner {
    names: Names,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    uids: Mutex<Uids>,
    buffer: Arc<Semaphore>,
    refused: AtomicU64,
    refused_unlogged: AtomicU64,
    last_log_ms: AtomicU64,
}

/// Who holds connections now.
#[derive(Default)]
struct Uids {
    by_uid: HashMap<u32, UidUse>,
    /// Connections of all non-root uids together.
    non_root: usize,
}

/// One uid's open connections, unfinished-frame budget and hand-over turn.
struct UidUse {
    conns: usize,
    buffer: Arc<Semaphore>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Its uid holds `max_connections_per_uid`.
    PerUid,
    /// Non-root uids together hold all but `root_reserve`.
    Share,
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
    turn: Arc<tokio::sync::Mutex<()>>,
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

    /// Connections refused over the per-uid cap or the non-root share so
    /// far.
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
                Ok(slot) => return Ok(Conn { stream, peer, slot }),
                Err(why) => {
                    drop(stream);
                    self.note_refused(peer, why);
                }
            }
        }
    }

    fn admit(&self, peer: Peer, permit: OwnedSemaphorePermit) -> Result<Slot, Refusal> {
        // An unknown sender shares one bucket with the other unknowns.
        let uid = peer.uid.unwrap_or(u32::MAX);
        let inner = &self.0;
        let limits = &inner.limits;
        let mut uids = inner.uids.lock();
        let held = uids.by_uid.get(&uid).map_or(0, |u| u.conns);
        if uid != 0 {
            if held >= limits.max_connections_per_uid {
                return Err(Refusal::PerUid);
            }
            if uids.non_root >= limits.non_root_share() {
                return Err(Refusal::Share);
            }
            uids.non_root += 1;
        }
        let per_uid_budget = limits.max_frame.max(FREE_FRAME_BYTES) * UID_BUFFER_FRAMES;
        let entry = uids.by_uid.entry(uid).or_insert_with(|| UidUse {
            conns: 0,
            buffer: Arc::new(Semaphore::new(per_uid_budget)),
            turn: Arc::default(),
        });
        entry.conns += 1;
        Ok(Slot {
            inner: inner.clone(),
            uid,
            buffer: entry.buffer.clone(),
            turn: entry.turn.clone(),
            _permit: permit,
        })
    }

    /// Counts a refusal; logs the count at most once per
    /// [`REFUSAL_LOG_EVERY`], with the limit of the latest one.
    fn note_refused(&self, peer: Peer, why: Refusal) {
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
        let (names, limits) = (&inner.names, &inner.limits);
        let over = match why {
            Refusal::PerUid => format!(
                "over {} = {}",
                names.per_uid_key, limits.max_connections_per_uid
            ),
            Refusal::Share => format!(
                "over the {} connections all local users may hold together ({} of the {} are \
                 kept for root: {})",
                limits.non_root_share(),
                limits.root_reserve,
                limits.max_connections,
                names.reserve_key
            ),
        };
        tracing::warn!(
            socket = names.socket,
            %peer,
            refused = count,
            "closed {count} connection(s) of local users (the latest from {peer}, {over}); \
             further refusals are logged at most every {REFUSAL_LOG_EVERY:?}",
        );
    }
}

// === impl ConnLimits ===

impl ConnLimits {
    /// Connections non-root uids may hold together (at least one).
    pub fn non_root_share(&self) -> usize {
        self.max_connections
            .saturating_sub(self.root_reserve)
            .max(1)
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

impl Slot {
    /// Sends `item` on `tx` in its uid's turn: at once while the channel
    /// has room (then nobody is waiting, so nobody is passed); when it is
    /// full, behind the uid's other connections, so the channel's queue
    /// holds at most one waiter per uid and serves the uids by turns.
    pub async fn send<T>(&self, tx: &mpsc::Sender<T>, item: T) -> Result<(), SendError<T>> {
        match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(item)) => Err(SendError(item)),
            Err(TrySendError::Full(item)) => {
                let _turn = self.turn.lock().await;
                tx.send(item).await
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut uids = self.inner.uids.lock();
        if self.uid != 0 {
            uids.non_root -= 1;
        }
        if let Some(u) = uids.by_uid.get_mut(&self.uid) {
            u.conns -= 1;
            if u.conns == 0 {
                uids.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests;

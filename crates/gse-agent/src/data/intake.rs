//! [`Intake`]: how producers inside the agent (the snapshot collector, ...)
//! hand records to the data path, next to the local socket; and [`Inbox`],
//! what the batcher takes both from.
//!
//! The agent's own records have their own queue, taken first: the local
//! socket's queue is shared with local users, and one of them flooding
//! keeps it full, where a record pushed without waiting would be dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ipc_codec::{Record, RecordKind};

/// A cloneable, non-blocking way into the batcher. Records pushed here
/// travel exactly like those from the local socket (batched per data id,
/// spooled, acknowledged).
#[derive(Clone, Debug)]
pub struct Intake {
    tx: mpsc::Sender<Vec<Record>>,
    dropped: Arc<AtomicU64>,
}

// === impl Intake ===

impl Intake {
    pub(crate) fn new(tx: mpsc::Sender<Vec<Record>>) -> Intake {
        Intake {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Queues one record; never waits. Returns false (and counts a drop)
    /// when the batcher's queue is full or the data path has stopped.
    pub fn push(&self, data_id: u32, payload: Bytes) -> bool {
        match self.tx.try_send(vec![self.record(data_id, payload)]) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// A record of the agent's own (no sender: it is the agent).
    fn record(&self, data_id: u32, payload: Bytes) -> Record {
        Record {
            kind: RecordKind::Common,
            data_id,
            utctime: 0,
            index: 0,
            flags: 0,
            metas: Vec::new(),
            payload,
            peer: Default::default(),
        }
    }

    /// Records refused by [`push`](Intake::push) so far (all clones).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The batcher's two queues: the agent's own records ([`Intake`]) and the
/// local socket's chunks. Ends when both producers are gone.
#[derive(Debug)]
pub struct Inbox {
    own: Option<mpsc::Receiver<Vec<Record>>>,
    socket: Option<mpsc::Receiver<Vec<Record>>>,
}

// === impl Inbox ===

impl Inbox {
    pub fn new(own: mpsc::Receiver<Vec<Record>>, socket: mpsc::Receiver<Vec<Record>>) -> Inbox {
        Inbox {
            own: Some(own),
            socket: Some(socket),
        }
    }

    /// The next chunk, the agent's own first; `None` once both are closed.
    pub async fn recv(&mut self) -> Option<Vec<Record>> {
        loop {
            tokio::select! {
                biased;
                r = recv_or_pending(&mut self.own) => match r {
                    Some(r) => return Some(r),
                    None => self.own = None,
                },
                r = recv_or_pending(&mut self.socket) => match r {
                    Some(r) => return Some(r),
                    None => self.socket = None,
                },
                _ = std::future::ready(()), if self.own.is_none() && self.socket.is_none() => {
                    return None;
                }
            }
        }
    }

    /// A chunk already queued, if any (at shutdown).
    pub fn try_recv(&mut self) -> Option<Vec<Record>> {
        [&mut self.own, &mut self.socket]
            .into_iter()
            .flatten()
            .find_map(|rx| rx.try_recv().ok())
    }
}

async fn recv_or_pending(rx: &mut Option<mpsc::Receiver<Vec<Record>>>) -> Option<Vec<Record>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn push_never_blocks_and_counts_drops() {
        let (tx, mut rx) = mpsc::channel(1);
        let intake = Intake::new(tx);
        assert!(intake.push(7, Bytes::from_static(b"a")));
        assert!(!intake.clone().push(7, Bytes::from_static(b"b")));
        assert_eq!(intake.dropped(), 1);
        let got = rx.recv().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].data_id, &got[0].payload[..]), (7, &b"a"[..]));
    }

    #[tokio::test]
    async fn the_agents_own_records_pass_a_full_socket_queue() {
        let (own_tx, own_rx) = mpsc::channel(4);
        let (socket_tx, socket_rx) = mpsc::channel(2);
        let mut inbox = Inbox::new(own_rx, socket_rx);
        let flood = |n: u64| {
            let mut r = Intake::new(own_tx.clone()).record(1, Bytes::new());
            r.index = n;
            vec![r]
        };
        socket_tx.try_send(flood(1)).unwrap();
        socket_tx.try_send(flood(2)).unwrap();
        assert!(
            socket_tx.try_send(flood(3)).is_err(),
            "the socket queue is full"
        );
        let intake = Intake::new(own_tx);
        assert!(intake.push(7, Bytes::from_static(b"own")), "not dropped");
        assert_eq!(inbox.recv().await.unwrap()[0].data_id, 7, "taken first");
        assert_eq!(inbox.recv().await.unwrap()[0].index, 1);
        drop((intake, socket_tx));
        assert_eq!(inbox.try_recv().unwrap()[0].index, 2);
        assert!(inbox.recv().await.is_none(), "both producers gone");
    }
}

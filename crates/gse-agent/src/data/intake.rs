//! [`Intake`]: how producers inside the agent (the snapshot collector, ...)
//! hand records to the data path, next to the local socket.

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
        let record = Record {
            kind: RecordKind::Common,
            data_id,
            utctime: 0,
            index: 0,
            flags: 0,
            metas: Vec::new(),
            payload,
            peer: Default::default(),
        };
        match self.tx.try_send(vec![record]) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records refused by [`push`](Intake::push) so far (all clones).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
}

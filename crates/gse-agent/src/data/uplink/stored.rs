//! Batches on their way to the DataServer ([`Pending`]) and how they are
//! kept in the spool ([`SpoolHandle`]).
//!
//! A spool entry is one [`SpoolBatch`]: `records[0]` is the batch's wire seq
//! (8 bytes, big-endian), every further record is the record's receive time
//! (8 bytes, big-endian, unix ms) followed by its payload. So a batch sent
//! again from the spool keeps its seq and its records their receive times.
//! In memory a batch is its finished `DataBatch` frame
//! ([`BatchBuf`](crate::data::wire::BatchBuf)); the spool entry is made
//! from it (and it from the entry) only when a batch goes through the disk.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use prost::Message;

use crate::data::batcher::OutBatch;
use crate::data::spool::{PushOutcome, SeqNo, Spool, SpoolBatch, SpoolError};
use crate::data::wire::{BatchBuf, DataBatch, frame_body};

/// Where a pending batch lives besides memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Only in memory (counted against `memory_max_mb`).
    Memory,
    /// In the spool at this position (acked there once the server acks).
    Spool(SeqNo),
}

/// A batch not yet acknowledged by the DataServer.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// The wire seq: (agent, seq) names the delivery.
    pub seq: u64,
    pub data_id: u32,
    /// Records in the batch.
    pub records: usize,
    /// The whole `DataBatch` frame, as it goes on the link.
    pub frame: Bytes,
    /// Approximate size, for memory accounting.
    pub bytes: usize,
    pub origin: Origin,
}

impl Pending {
    /// A batch from the batcher, given its wire seq.
    pub fn from_batcher(b: OutBatch, seq: u64) -> Pending {
        Pending {
            seq,
            data_id: b.data_id,
            records: b.records(),
            bytes: b.bytes,
            frame: b.buf.finish(seq),
            origin: Origin::Memory,
        }
    }

    /// Bytes of the frame's body (what the DataServer's limit applies to).
    pub fn body_len(&self) -> usize {
        frame_body(&self.frame).len()
    }
}

/// Encodes `p` as a spool entry.
pub fn to_spool(p: &Pending) -> SpoolBatch {
    // Our own frame always decodes; the payloads are slices of it.
    let batch = DataBatch::decode(frame_body(&p.frame)).unwrap_or_default();
    let mut records = Vec::with_capacity(batch.records.len() + 1);
    records.push(Bytes::copy_from_slice(&p.seq.to_be_bytes()));
    for r in &batch.records {
        let mut b = BytesMut::with_capacity(8 + r.payload.len());
        b.put_u64(r.received_ms);
        b.put_slice(&r.payload);
        records.push(b.freeze());
    }
    SpoolBatch {
        data_id: p.data_id,
        records,
    }
}

/// Decodes a spool entry; `None` if it is not one of ours (then it is
/// skipped: it cannot be sent meaningfully).
pub fn from_spool(at: SeqNo, b: SpoolBatch) -> Option<Pending> {
    let mut it = b.records.into_iter();
    let head = it.next()?;
    let seq = u64::from_be_bytes(head.as_ref().try_into().ok()?);
    let size: usize = it.as_slice().iter().map(|r| r.len() + 16).sum();
    let mut buf = BatchBuf::with_capacity(size);
    let mut bytes = 0;
    for r in it {
        if r.len() < 8 {
            return None;
        }
        let received_ms = u64::from_be_bytes(r[..8].try_into().ok()?);
        buf.push(b.data_id, received_ms, &r[8..]);
        bytes += r.len() - 8 + 16;
    }
    Some(Pending {
        seq,
        data_id: b.data_id,
        records: buf.records(),
        frame: buf.finish(seq),
        bytes,
        origin: Origin::Spool(at),
    })
}

/// The spool, used from async code (each call runs on the blocking pool).
#[derive(Clone)]
pub struct SpoolHandle {
    inner: Arc<Mutex<Spool>>,
}

/// What a peek found.
pub struct Peeked {
    pub batches: Vec<Pending>,
    /// Seq of the last entry read (also one that could not be decoded).
    pub last: Option<SeqNo>,
    /// Entries read (decodable or not).
    pub read: usize,
}

// === impl SpoolHandle ===

impl SpoolHandle {
    pub fn new(spool: Spool) -> SpoolHandle {
        SpoolHandle {
            inner: Arc::new(Mutex::new(spool)),
        }
    }

    /// Un-acked batches in the spool.
    pub fn waiting(&self) -> u64 {
        self.inner.lock().len_batches()
    }

    pub fn next_seq(&self) -> SeqNo {
        self.inner.lock().next_seq()
    }

    /// Highest wire seq among the un-acked entries (to restart the seq
    /// counter above it).
    pub async fn max_wire_seq(&self) -> Result<u64, SpoolError> {
        self.blocking(|s| {
            let mut max = 0;
            let mut after = None;
            loop {
                let got = s.peek_after(after, 256)?;
                let Some((last, _)) = got.last() else {
                    return Ok(max);
                };
                after = Some(*last);
                for (at, b) in got {
                    if let Some(p) = from_spool(at, b) {
                        max = max.max(p.seq);
                    }
                }
            }
        })
        .await
    }

    pub async fn push(&self, p: &Pending) -> Result<PushOutcome, SpoolError> {
        let batch = to_spool(p);
        self.blocking(move |s| s.push(&batch)).await
    }

    pub async fn peek_after(&self, after: Option<SeqNo>, n: usize) -> Result<Peeked, SpoolError> {
        self.blocking(move |s| {
            let got = s.peek_after(after, n)?;
            let read = got.len();
            let last = got.last().map(|(at, _)| *at);
            let batches = got
                .into_iter()
                .filter_map(|(at, b)| from_spool(at, b))
                .collect();
            Ok(Peeked {
                batches,
                last,
                read,
            })
        })
        .await
    }

    pub async fn ack(&self, up_to: SeqNo) -> Result<(), SpoolError> {
        self.blocking(move |s| s.ack(up_to)).await
    }

    pub async fn sync(&self) -> Result<(), SpoolError> {
        self.blocking(|s| s.sync()).await
    }

    pub fn stats(&self) -> crate::data::spool::SpoolStats {
        self.inner.lock().stats()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock()))
            .await
            .expect("spool operations do not panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_entries_keep_seq_and_receive_times() {
        let mut buf = BatchBuf::with_capacity(0);
        buf.push(9, 123, b"one");
        buf.push(9, 456, b"");
        let p = Pending::from_batcher(
            OutBatch {
                data_id: 9,
                buf,
                bytes: 35,
            },
            77,
        );
        assert_eq!((p.records, p.origin), (2, Origin::Memory));
        let back = from_spool(SeqNo(3), to_spool(&p)).unwrap();
        assert_eq!(back.seq, 77);
        assert_eq!(back.records, 2);
        assert_eq!(back.bytes, p.bytes);
        assert_eq!(back.frame, p.frame, "the same frame goes on the link");
        assert_eq!(back.origin, Origin::Spool(SeqNo(3)));
        let records = DataBatch::decode(frame_body(&back.frame)).unwrap().records;
        assert_eq!(&records[0].payload[..], b"one");
        assert_eq!((records[0].received_ms, records[1].received_ms), (123, 456));
        let junk = SpoolBatch {
            data_id: 1,
            records: vec![Bytes::from_static(b"short")],
        };
        assert!(from_spool(SeqNo(1), junk).is_none());
    }
}

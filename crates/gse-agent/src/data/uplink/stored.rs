//! Batches on their way to the DataServer ([`Pending`]) and how they are
//! kept in the spool ([`SpoolHandle`]).
//!
//! A spool entry is one [`SpoolBatch`]: `records[0]` is the batch's wire seq
//! (8 bytes, big-endian) and the entry format (1 byte, [`ENTRY_V1`]); every
//! further record is its receive time (8 bytes, big-endian, unix ms), its
//! sender ([`PEER_LEN`] bytes: a flags byte saying which of uid and pid are
//! known, then both as big-endian u32) and its payload. So a batch sent
//! again from the spool keeps its seq and its records their receive times
//! and senders. Entries written before the sender was kept (an 8-byte
//! `records[0]`, records of receive time and payload) are still read.
//! In memory a batch is its finished `DataBatch` frame
//! ([`BatchBuf`](crate::data::wire::BatchBuf)); the spool entry is made
//! from it (and it from the entry) only when a batch goes through the disk.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use prost::Message;

use crate::data::batcher::OutBatch;
use crate::data::ipc_codec::Peer;
use crate::data::spool::{PushOutcome, SeqNo, Spool, SpoolBatch, SpoolError};
use crate::data::wire::{BatchBuf, DataBatch, DataRecord, frame_body};

/// Entry format byte after the seq: records carry their sender.
const ENTRY_V1: u8 = 1;
/// Bytes of a record's sender in a [`ENTRY_V1`] entry.
const PEER_LEN: usize = 9;
const HAS_UID: u8 = 1;
const HAS_PID: u8 = 2;

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
    let mut head = BytesMut::with_capacity(9);
    head.put_u64(p.seq);
    head.put_u8(ENTRY_V1);
    records.push(head.freeze());
    for r in &batch.records {
        let mut b = BytesMut::with_capacity(8 + PEER_LEN + r.payload.len());
        b.put_u64(r.received_ms);
        put_peer(&mut b, r);
        b.put_slice(&r.payload);
        records.push(b.freeze());
    }
    SpoolBatch {
        data_id: p.data_id,
        records,
    }
}

fn put_peer(b: &mut BytesMut, r: &DataRecord) {
    let flags = if r.peer_uid.is_some() { HAS_UID } else { 0 }
        | if r.peer_pid.is_some() { HAS_PID } else { 0 };
    b.put_u8(flags);
    b.put_u32(r.peer_uid.unwrap_or(0));
    b.put_u32(r.peer_pid.unwrap_or(0));
}

fn get_peer(b: &[u8]) -> Peer {
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Peer {
        uid: (b[0] & HAS_UID != 0).then(|| u32_at(1)),
        pid: (b[0] & HAS_PID != 0).then(|| u32_at(5) as i32),
    }
}

/// Decodes a spool entry; `None` if it is not one of ours (then it is
/// skipped: it cannot be sent meaningfully).
pub fn from_spool(at: SeqNo, b: SpoolBatch) -> Option<Pending> {
    let mut it = b.records.into_iter();
    let head = it.next()?;
    let seq = u64::from_be_bytes(head.get(..8)?.try_into().ok()?);
    let peer_len = match head.get(8..) {
        Some([]) => 0,
        Some([ENTRY_V1]) => PEER_LEN,
        _ => return None,
    };
    let size: usize = it.as_slice().iter().map(|r| r.len() + 16).sum();
    let mut buf = BatchBuf::with_capacity(size);
    let mut bytes = 0;
    for r in it {
        let start = 8 + peer_len;
        if r.len() < start {
            return None;
        }
        let received_ms = u64::from_be_bytes(r[..8].try_into().ok()?);
        let peer = if peer_len > 0 {
            get_peer(&r[8..start])
        } else {
            Peer::default()
        };
        buf.push(b.data_id, received_ms, peer, &r[start..]);
        bytes += r.len() - start + 16;
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
        let sender = Peer {
            pid: Some(4242),
            uid: Some(0),
        };
        buf.push(9, 123, sender, b"one");
        buf.push(9, 456, Peer::default(), b"");
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
        assert_eq!(
            (records[0].peer_uid, records[0].peer_pid),
            (Some(0), Some(4242))
        );
        assert_eq!((records[1].peer_uid, records[1].peer_pid), (None, None));
        let junk = SpoolBatch {
            data_id: 1,
            records: vec![Bytes::from_static(b"short")],
        };
        assert!(from_spool(SeqNo(1), junk).is_none());
    }

    #[test]
    fn entries_spooled_before_senders_were_kept_still_read() {
        let old = SpoolBatch {
            data_id: 5,
            records: vec![
                Bytes::copy_from_slice(&12u64.to_be_bytes()),
                Bytes::from([&99u64.to_be_bytes()[..], b"old"].concat()),
            ],
        };
        let p = from_spool(SeqNo(1), old).unwrap();
        assert_eq!(p.seq, 12);
        let r = &DataBatch::decode(frame_body(&p.frame)).unwrap().records[0];
        assert_eq!(
            (r.received_ms, &r.payload[..], r.peer_uid),
            (99, &b"old"[..], None)
        );
    }
}

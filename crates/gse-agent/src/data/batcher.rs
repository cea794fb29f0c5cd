//! The batcher: one task between the record producers (local socket,
//! [`Intake`](super::Intake)) and the uplink. It groups records per data id,
//! stamps each with the agent's receive time (libgse's `utctime` is not
//! reliable, COMPAT §1.2) and cuts a data id's batch when it reaches
//! `batch_max_kb` or its first record is `batch_linger_ms` old.
//!
//! Memory is bounded: at most [`MAX_OPEN_GROUPS`] data ids are open at once
//! (the oldest is cut early beyond that), each below `batch_max_kb`, and the
//! queue to the uplink is bounded, so a slow uplink makes this task wait,
//! which makes the socket connections stop reading (backpressure up to the
//! collectors). Data id 0 is not a channel (libgse never sends it): counted
//! and dropped.
//!
//! No batch body exceeds `gse_proto::MAX_BATCH_BYTES`, which every
//! DataServer takes: a record that would push its data id's open batch past
//! it cuts that batch first, so the largest record the socket accepts
//! (`gse_proto::MAX_RECORD_BYTES`) travels in a batch of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DataStats;
use super::intake::Inbox;
use super::ipc_codec::{Peer, Record};
use super::wire::{BatchBuf, SEQ_FIELD_MAX, record_encoded_len};

/// Most data ids with an open (not yet cut) batch.
pub const MAX_OPEN_GROUPS: usize = 1024;
/// Per-record overhead counted towards a batch's size (protobuf framing).
const RECORD_OVERHEAD: usize = 16;
/// Buffer size of a data id's first batch; later ones start at the size of
/// the data id's previous batch, so a busy one is not grown by copying.
const FIRST_BUFFER: usize = 32 * 1024;
/// Data ids whose last batch size is remembered (cleared beyond).
const MAX_SIZE_HINTS: usize = 4 * MAX_OPEN_GROUPS;
/// Encoded record bytes a batch may hold: the link's batch limit minus the
/// seq that [`BatchBuf::finish`] adds.
pub const MAX_RECORDS_LEN: usize = gse_proto::MAX_BATCH_BYTES - SEQ_FIELD_MAX;

/// One data id's records, cut and ready for the uplink: already encoded
/// as a `DataBatch` frame but for its seq ([`BatchBuf`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OutBatch {
    pub data_id: u32,
    pub buf: BatchBuf,
    /// Approximate size (payloads plus framing), for memory accounting.
    pub bytes: usize,
}

impl OutBatch {
    /// Records in the batch.
    pub fn records(&self) -> usize {
        self.buf.records()
    }
}

/// When to cut.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_bytes: usize,
    pub linger: Duration,
}

/// The open batches, one per data id. Pure: time is passed in.
#[derive(Debug)]
pub struct Groups {
    limits: BatchLimits,
    open: HashMap<u32, (Instant, OutBatch)>,
    /// Encoded size of each data id's last batch.
    hints: HashMap<u32, usize>,
}

// === impl Groups ===

impl Groups {
    pub fn new(limits: BatchLimits) -> Groups {
        Groups {
            limits,
            open: HashMap::new(),
            hints: HashMap::new(),
        }
    }

    /// Adds a record (its payload is copied into the batch); returns the
    /// batches this cut (the open one when the record would take it past
    /// [`MAX_RECORDS_LEN`], its own when full, the oldest one when too many
    /// data ids are open).
    pub fn add(
        &mut self,
        data_id: u32,
        received_ms: u64,
        peer: Peer,
        payload: &[u8],
        now: Instant,
    ) -> Vec<OutBatch> {
        let mut cut = Vec::new();
        let encoded = record_encoded_len(data_id, received_ms, peer, payload.len());
        let overflows = self
            .open
            .get(&data_id)
            .is_some_and(|(_, b)| b.buf.records_len() + encoded > MAX_RECORDS_LEN);
        if overflows && let Some(b) = self.take(data_id) {
            cut.push(b);
        }
        let size = payload.len() + RECORD_OVERHEAD;
        let full = match self.open.get_mut(&data_id) {
            Some((_, batch)) => {
                batch.buf.push(data_id, received_ms, peer, payload);
                batch.bytes += size;
                batch.bytes >= self.limits.max_bytes
            }
            None => {
                if self.open.len() >= MAX_OPEN_GROUPS {
                    let oldest = self
                        .open
                        .iter()
                        .min_by_key(|(_, (t, _))| *t)
                        .map(|(k, _)| *k);
                    if let Some(b) = oldest.and_then(|k| self.take(k)) {
                        cut.push(b);
                    }
                }
                let hint = self.hints.get(&data_id).copied().unwrap_or(FIRST_BUFFER);
                let capacity = hint.min(self.limits.max_bytes) + hint / 8 + size;
                let mut buf = BatchBuf::with_capacity(capacity);
                buf.push(data_id, received_ms, peer, payload);
                let batch = OutBatch {
                    data_id,
                    buf,
                    bytes: size,
                };
                let full = batch.bytes >= self.limits.max_bytes;
                self.open.insert(data_id, (now, batch));
                full
            }
        };
        if full && let Some(b) = self.take(data_id) {
            cut.push(b);
        }
        cut
    }

    /// Removes a data id's open batch, remembering its size.
    fn take(&mut self, data_id: u32) -> Option<OutBatch> {
        let (_, b) = self.open.remove(&data_id)?;
        if self.hints.len() >= MAX_SIZE_HINTS {
            self.hints.clear();
        }
        self.hints.insert(data_id, b.buf.records_len());
        Some(b)
    }

    /// Batches whose linger time is over at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<OutBatch> {
        let linger = self.limits.linger;
        let due: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, (t, _))| *t + linger <= now)
            .map(|(k, _)| *k)
            .collect();
        due.into_iter().filter_map(|k| self.take(k)).collect()
    }

    /// When the next batch becomes due, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|(t, _)| *t + self.limits.linger)
            .min()
    }

    /// Every open batch (at shutdown).
    pub fn drain(&mut self) -> Vec<OutBatch> {
        self.open.drain().map(|(_, (_, b))| b).collect()
    }
}

/// Runs the batcher until `shutdown` (or until every producer is gone);
/// then cuts what is open, hands it on and returns, which closes `out`.
/// Producers hand over records in chunks (all a socket read brought).
pub async fn run(
    mut records: Inbox,
    out: mpsc::Sender<OutBatch>,
    limits: BatchLimits,
    stats: Arc<DataStats>,
    shutdown: CancellationToken,
) {
    let mut groups = Groups::new(limits);
    loop {
        let deadline = groups.next_deadline();
        let cut = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = records.recv() => match r {
                Some(r) => accept(&mut groups, r, &stats),
                None => break,
            },
            _ = sleep_until_opt(deadline) => groups.due(Instant::now()),
        };
        for batch in cut {
            if out.send(batch).await.is_err() {
                return;
            }
        }
    }
    // Whatever producers already handed over still goes on.
    let mut rest = Vec::new();
    while let Some(r) = records.try_recv() {
        rest.extend(accept(&mut groups, r, &stats));
    }
    rest.extend(groups.drain());
    for batch in rest {
        if out.send(batch).await.is_err() {
            return;
        }
    }
}

/// Adds a chunk of records, all stamped with one receive time.
fn accept(groups: &mut Groups, chunk: Vec<Record>, stats: &DataStats) -> Vec<OutBatch> {
    let (received_ms, now) = (gse_core::now_ms(), Instant::now());
    let mut cut = Vec::new();
    let mut taken = 0;
    for r in &chunk {
        if r.data_id == 0 {
            DataStats::bump(&stats.no_data_id, 1);
            continue;
        }
        taken += 1;
        cut.extend(groups.add(r.data_id, received_ms, r.peer, &r.payload, now));
    }
    DataStats::bump(&stats.records_in, taken);
    cut
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::data::wire::{DataBatch, frame_body};

    /// Adds a record of `len` bytes.
    fn add(g: &mut Groups, data_id: u32, len: usize, now: Instant) -> Vec<OutBatch> {
        g.add(data_id, 1, Peer::default(), &vec![b'x'; len], now)
    }

    fn decode(b: OutBatch) -> DataBatch {
        DataBatch::decode(frame_body(&b.buf.finish(1))).unwrap()
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            max_bytes: 1000,
            linger: Duration::from_millis(20),
        }
    }

    #[test]
    fn groups_per_data_id_and_cuts_by_size() {
        let t0 = Instant::now();
        let mut g = Groups::new(limits());
        assert!(add(&mut g, 1, 400, t0).is_empty());
        assert!(add(&mut g, 2, 400, t0).is_empty());
        let cut = add(&mut g, 1, 600, t0);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].data_id, 1);
        assert_eq!(cut[0].records(), 2);
        let sent = decode(cut.into_iter().next().unwrap());
        assert_eq!(sent.records.len(), 2);
        assert_eq!(sent.records[1].payload.len(), 600);
        // Data id 2 is still open, alone.
        let rest = g.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].data_id, 2);
    }

    #[test]
    fn the_largest_record_goes_alone_and_no_batch_passes_the_link_limit() {
        let t0 = Instant::now();
        let mut g = Groups::new(BatchLimits {
            max_bytes: 16 << 20,
            linger: Duration::from_secs(1),
        });
        let sender = Peer {
            pid: Some(i32::MAX),
            uid: Some(u32::MAX),
        };
        let big = vec![b'b'; gse_proto::MAX_RECORD_BYTES];
        let small = vec![b's'; gse_proto::BATCH_FRAMING_BYTES];
        assert!(g.add(u32::MAX, u64::MAX, sender, &small, t0).is_empty());
        // The big one does not fit beside the small one: that batch goes.
        let cut = g.add(u32::MAX, u64::MAX, sender, &big, t0);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].records(), 1);
        // And the next small record does not fit beside the big one.
        let cut = g.add(u32::MAX, u64::MAX, sender, &small, t0);
        assert_eq!(cut.len(), 1);
        let alone = cut.into_iter().next().unwrap();
        assert_eq!(alone.records(), 1);
        let frame = alone.buf.finish(u64::MAX);
        let body = frame_body(&frame);
        assert!(
            body.len() <= gse_proto::MAX_BATCH_BYTES,
            "a {}-byte batch body",
            body.len()
        );
        assert_eq!(
            DataBatch::decode(body).unwrap().records[0].payload.len(),
            big.len()
        );
    }

    #[test]
    fn cuts_by_linger_time_in_order_of_age() {
        let t0 = Instant::now();
        let mut g = Groups::new(limits());
        add(&mut g, 1, 10, t0);
        add(&mut g, 2, 10, t0 + Duration::from_millis(10));
        assert_eq!(g.next_deadline(), Some(t0 + Duration::from_millis(20)));
        assert!(g.due(t0 + Duration::from_millis(19)).is_empty());
        let due = g.due(t0 + Duration::from_millis(20));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].data_id, 1);
        assert_eq!(g.next_deadline(), Some(t0 + Duration::from_millis(30)));
    }

    #[test]
    fn too_many_open_data_ids_cut_the_oldest() {
        let t0 = Instant::now();
        let mut g = Groups::new(limits());
        for id in 1..=MAX_OPEN_GROUPS as u32 {
            assert!(add(&mut g, id, 1, t0 + Duration::from_micros(id.into())).is_empty());
        }
        let cut = add(&mut g, 99_999, 1, t0 + Duration::from_secs(1));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].data_id, 1);
    }

    #[tokio::test]
    async fn run_drops_data_id_zero_and_flushes_at_shutdown() {
        let (tx, rx) = mpsc::channel(16);
        let (_socket_tx, socket_rx) = mpsc::channel(16);
        let rx = Inbox::new(rx, socket_rx);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let stats = Arc::new(DataStats::default());
        let shutdown = CancellationToken::new();
        let limits = BatchLimits {
            max_bytes: 1 << 20,
            linger: Duration::from_secs(3600),
        };
        let task = tokio::spawn(run(rx, out_tx, limits, stats.clone(), shutdown.clone()));
        let intake = super::super::Intake::new(tx);
        assert!(intake.push(0, Bytes::from_static(b"zero")));
        assert!(intake.push(5, Bytes::from_static(b"five")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        task.await.unwrap();
        let batch = out_rx.recv().await.unwrap();
        assert_eq!(batch.data_id, 5);
        let sent = decode(batch);
        assert_eq!(&sent.records[0].payload[..], b"five");
        assert!(sent.records[0].received_ms > 0);
        assert_eq!(sent.records[0].data_id, 5);
        assert!(out_rx.recv().await.is_none());
        assert_eq!(stats.snapshot().no_data_id, 1);
    }
}

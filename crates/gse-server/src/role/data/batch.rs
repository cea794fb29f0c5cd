//! Storing one agent batch: split it per data id, give each record to the
//! taps of its data id, write each data id's records to every target of its
//! route concurrently, and say whether *all* of them stored it (only then
//! may the agent forget the batch).
//!
//! Records of a data id with neither a route nor a tap are counted
//! (`gse_data_unrouted_records_total`) and dropped, with at most one log
//! line per [`UNROUTED_LOG_EVERY`]; they do not make the batch fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gse_core::seams::{Batch, Record};

use super::DataTap;
use super::metrics;
use super::routes::RouteTable;
use gse_proto::link::DataBatch;

/// Least time between two "no route" log lines.
pub const UNROUTED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a batch was not stored (the agent keeps it and retries).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {targets} sink writes failed: {first}")]
pub struct StoreError {
    pub failed: usize,
    pub targets: usize,
    pub first: String,
}

/// What storing a batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub records: usize,
    pub bytes: usize,
    /// Records dropped for want of a route.
    pub unrouted: usize,
}

/// Routes and taps, shared by every DataServer of the node.
#[derive(Clone)]
pub struct BatchHandler {
    routes: RouteTable,
    taps: Arc<[Arc<dyn DataTap>]>,
    last_unrouted_log_ms: Arc<AtomicU64>,
}

// === impl BatchHandler ===

impl BatchHandler {
    pub fn new(routes: RouteTable, taps: Vec<Arc<dyn DataTap>>) -> BatchHandler {
        BatchHandler {
            routes,
            taps: taps.into(),
            last_unrouted_log_ms: Arc::default(),
        }
    }

    /// Stores `batch` from agent `source` (`cloud:ip`); `Ok` only when every
    /// sink of every routed record stored it.
    pub async fn store(&self, source: &Arc<str>, batch: DataBatch) -> Result<Stored, StoreError> {
        let now = gse_core::now_ms();
        let mut stored = Stored {
            records: batch.records.len(),
            ..Stored::default()
        };
        let mut groups: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for r in batch.records {
            stored.bytes += r.payload.len();
            groups.entry(r.data_id).or_default().push(Record {
                data_id: r.data_id,
                received_ms: r.received_ms,
                payload: r.payload,
                peer_uid: r.peer_uid,
                peer_pid: r.peer_pid,
            });
        }
        let mut writes = Vec::new();
        for (data_id, records) in groups {
            let label = metrics::data_id_label(data_id);
            let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
            metrics::records_in(&label, records.len() as u64, bytes as u64);
            if let Some(oldest) = records.iter().map(|r| r.received_ms).min() {
                metrics::latency(oldest, now);
            }
            let tapped = self.tap(source, data_id, &records);
            match self.routes.targets(data_id) {
                Some(targets) if !targets.is_empty() => {
                    for t in targets.iter() {
                        let part = Batch {
                            source: source.clone(),
                            seq: batch.seq,
                            records: records.clone(),
                        };
                        let sink = t.sink.clone();
                        let label = label.clone();
                        writes.push(async move {
                            let n = part.records.len() as u64;
                            let result = sink.write_batch(&part).await;
                            match &result {
                                Ok(()) => metrics::records_out(&label, sink.name(), n),
                                Err(_) => metrics::sink_error(sink.name()),
                            }
                            result
                        });
                    }
                }
                _ if tapped => {}
                _ => {
                    stored.unrouted += records.len();
                    metrics::unrouted(&label, records.len() as u64);
                    self.log_unrouted(data_id, records.len(), source);
                }
            }
        }
        let targets = writes.len();
        let errors: Vec<_> = futures::future::join_all(writes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        match errors.first() {
            None => Ok(stored),
            Some(first) => Err(StoreError {
                failed: errors.len(),
                targets,
                first: first.to_string(),
            }),
        }
    }

    /// Gives the records to the taps of `data_id`; true if there was one.
    fn tap(&self, source: &str, data_id: u32, records: &[Record]) -> bool {
        let mut any = false;
        for tap in self.taps.iter().filter(|t| t.data_id() == data_id) {
            any = true;
            for r in records {
                tap.observe(source, r);
            }
        }
        any
    }

    fn log_unrouted(&self, data_id: u32, records: usize, source: &str) {
        let now = gse_core::now_ms();
        let last = self.last_unrouted_log_ms.load(Ordering::Relaxed);
        let every = UNROUTED_LOG_EVERY.as_millis() as u64;
        if now.saturating_sub(last) >= every
            && self
                .last_unrouted_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                data_id,
                records,
                agent = source,
                "records of a data id with no route were dropped (add a route with add_route; further drops are only counted in gse_data_unrouted_records_total for {UNROUTED_LOG_EVERY:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests;

//! Batches heartbeats on their way to the state store: one store call per
//! batch (up to `MAX_BATCH`, or whatever arrived within `FLUSH_EVERY`), so
//! tens of thousands of agents cost a few store writes a second.
//!
//! Metrics: `gse_link_heartbeats_total` (heartbeats written),
//! `gse_link_heartbeat_batches_total` (store calls) and
//! `gse_link_heartbeat_store_seconds` (each call's time), so the batching
//! can be read from outside (`gse-bench scale`: heartbeats per batch).

use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::{HeartbeatUpdate, StateStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 65_536;
const MAX_BATCH: usize = 2048;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Starts the batching task and returns its input.
pub(super) fn start(
    store: Arc<dyn StateStore>,
    shutdown: CancellationToken,
) -> mpsc::Sender<HeartbeatUpdate> {
    let (tx, mut rx) = mpsc::channel::<HeartbeatUpdate>(QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => 0,
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            };
            if n == 0 {
                break;
            }
            // Let a little more arrive before writing, unless the batch is full.
            if batch.len() < MAX_BATCH {
                let _ = tokio::time::timeout(FLUSH_EVERY, async {
                    while batch.len() < MAX_BATCH {
                        let room = MAX_BATCH - batch.len();
                        if rx.recv_many(&mut batch, room).await == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
            metrics::counter!("gse_link_heartbeats_total").increment(batch.len() as u64);
            metrics::counter!("gse_link_heartbeat_batches_total").increment(1);
            let began = std::time::Instant::now();
            if let Err(e) = store.record_heartbeats(&batch).await {
                tracing::error!(error = %e, lost = batch.len(), "cannot record heartbeats; agent status may look stale");
            }
            metrics::histogram!("gse_link_heartbeat_store_seconds")
                .record(began.elapsed().as_secs_f64());
            batch.clear();
        }
    });
    tx
}

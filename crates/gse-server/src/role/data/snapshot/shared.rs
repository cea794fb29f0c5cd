//! Snapshots shared between the nodes of a cluster (D3 through any node).
//!
//! A cluster node's cache also hands every snapshot it keeps to a
//! [`SharedSnapshots`] store (Redis), in batches written by one task, so
//! that the API of any node can serve them: the agent's data goes to the
//! DataServer its holding node assigned, which may be another node's. The
//! data path never waits for it: a full queue drops the copy (counted in
//! `gse_snapshot_shared_dropped_total`), the local cache keeps the
//! snapshot.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::StoreError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Snapshots queued for the shared store before copies are dropped.
const QUEUE: usize = 20_000;
/// Most snapshots one write carries.
const BATCH: usize = 500;

/// Where the nodes of a cluster share snapshots; the Redis store is one.
#[async_trait]
pub trait SharedSnapshots: Send + Sync {
    /// Keeps each `(agent, arrival unix ms, snapshot JSON)`, at most `keep`
    /// per agent (the newest), for `window_ms` after the agent's last one.
    async fn put_snapshots(
        &self,
        batch: &[(AgentKey, u64, String)],
        keep: usize,
        window_ms: u64,
    ) -> Result<(), StoreError>;
    /// The agent's snapshots that arrived at or after `since_ms`, oldest
    /// first.
    async fn get_snapshots(&self, key: AgentKey, since_ms: u64) -> Result<Vec<String>, StoreError>;
}

/// A cache's link to the shared store.
pub(super) struct Sharing {
    pub store: Arc<dyn SharedSnapshots>,
    pub tx: mpsc::Sender<(AgentKey, u64, String)>,
}

impl Sharing {
    /// Starts the writer; it runs until `shutdown`.
    pub fn start(
        store: Arc<dyn SharedSnapshots>,
        keep: usize,
        window: Duration,
        shutdown: CancellationToken,
    ) -> (
        Sharing,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = write(store.clone(), rx, keep, window, shutdown);
        (Sharing { store, tx }, writer)
    }

    /// Queues a copy of a kept snapshot; never waits.
    pub fn offer(&self, key: AgentKey, json: &str) {
        let copy = (key, gse_core::now_ms(), json.to_string());
        if self.tx.try_send(copy).is_err() {
            ::metrics::counter!("gse_snapshot_shared_dropped_total").increment(1);
        }
    }
}

async fn write(
    store: Arc<dyn SharedSnapshots>,
    mut rx: mpsc::Receiver<(AgentKey, u64, String)>,
    keep: usize,
    window: Duration,
    shutdown: CancellationToken,
) {
    let window_ms = window.as_millis() as u64;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        if let Err(e) = store.put_snapshots(&batch, keep, window_ms).await {
            ::metrics::counter!("gse_snapshot_shared_dropped_total").increment(batch.len() as u64);
            tracing::warn!(error = %e, snapshots = batch.len(), "cannot share system snapshots with the other nodes; this node still serves them");
        }
        batch.clear();
    }
}

//! `Sink`: where the DataServer delivers a data id's records (D5).
//!
//! A sink acknowledges a batch only once it is stored; the DataServer acks
//! the agent only after every sink of the route did (no loss). The sinks
//! (file, Redis, Kafka) live in gse-server's data role, one instance per
//! route target (a stream_to bound to a route's topic or channel).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// One record as the data path carries it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub data_id: u32,
    /// When the agent received it, unix ms.
    pub received_ms: u64,
    pub payload: Bytes,
    /// The local user that wrote it to the agent's data socket (SO_PEERCRED);
    /// `None` for records the agent made itself, or from older agents.
    pub peer_uid: Option<u32>,
    /// That user's process, as [`peer_uid`](Record::peer_uid).
    pub peer_pid: Option<u32>,
}

/// Records of one agent batch (or the part of it bound for one sink).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The agent it came from, `cloud:ip`.
    pub source: Arc<str>,
    /// The agent's batch sequence number; with `source` it identifies a
    /// delivery, so a consumer can drop the duplicates that at-least-once
    /// delivery may produce.
    pub seq: u64,
    pub records: Vec<Record>,
}

/// Why a sink could not store a batch; the batch is then retried, not lost.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink} could not store {records} records: {message}")]
    Store {
        sink: String,
        records: usize,
        message: String,
    },
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name, as configured (a stream_to name).
    fn name(&self) -> &str;
    /// Stores a batch; returns only when it is stored as far as the sink can
    /// tell (at least handed to the OS or acknowledged by the server), so
    /// a crash of this process after the return loses nothing.
    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError>;
}

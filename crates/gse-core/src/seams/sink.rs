//! `Sink`: where the DataServer delivers a data id's records (D5).
//!
//! A sink acknowledges a batch only once it is stored; the DataServer acks
//! the agent only after every sink of the route did (no loss). The embedded
//! sinks (file, stdout) live in gse-server's data role; Redis and Kafka sinks
//! come with the data issue.

use async_trait::async_trait;
use bytes::Bytes;

/// One record as the data path carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub data_id: u32,
    /// The agent it came from, `cloud:ip`.
    pub source: String,
    /// When the agent received it, unix ms.
    pub received_ms: u64,
    pub payload: Bytes,
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
    /// Stores a batch; returns only when it is durable as far as the sink
    /// can tell.
    async fn write_batch(&self, batch: &[Record]) -> Result<(), SinkError>;
}

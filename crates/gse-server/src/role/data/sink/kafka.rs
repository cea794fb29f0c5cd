//! Kafka sink (D5): a route's records into a Kafka topic, acknowledged only
//! when the brokers acknowledged them (acks=all), so the DataServer's ack to
//! the agent is safe.
//!
//! Start at [`KafkaSink`]; its settings and their validation are in
//! [`config`] ([`KafkaTarget::validate`]). The wire client is rskafka (pure
//! Rust). Choices an operator should know:
//! - **Message**: value = the record's payload, unchanged; key = the agent
//!   (`cloud:ip`); timestamp = when the agent received it; headers
//!   `gse_agent`, `gse_seq` (the agent's batch seq), `gse_index` (position in
//!   the batch part this sink got) and `gse_data_id`, so a consumer can drop
//!   the duplicates that at-least-once delivery may cause; and, when known,
//!   `gse_peer_uid`/`gse_peer_pid`: the local user and process that wrote
//!   the record to the agent's socket.
//! - **Partition**: the route's `partition` is the topic's partition count
//!   (bk-monitor's meaning); a batch goes to `fnv1a(agent) % count`, so one
//!   agent's records stay in order. Absent or 1: partition 0.
//! - **Topics are not created** by the sink: bk-monitor creates them (or the
//!   brokers' `auto.create.topics.enable` does). A missing topic is an error
//!   naming the topic, and the batch stays with the agent.
//! - **Failures**: connect is lazy; any error drops the connection so the
//!   next batch reconnects from the bootstrap list, and `write_batch` returns
//!   an error (never panics) once a step (connect, or one produce request)
//!   took `request_timeout` (10 s) or rskafka's retries gave up. A batch
//!   larger than `max_request_bytes` is cut into several requests; if a
//!   later one fails the earlier ones are stored and come again on retry
//!   (at-least-once). A request the brokers refuse as too large is sent
//!   again one record per request; a record refused on its own can never
//!   be stored: it is dropped, logged and counted, rather than blocking
//!   every later record of its agent.
//!
//! Not here: TLS to the brokers (refused at validation), transactions and
//! idempotent producing (rskafka has neither).

mod config;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gse_core::seams::{Batch, Record, Sink, SinkError};
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tokio::sync::Mutex;

use crate::role::data::routes::model::{Route, StreamTo};

pub use config::{
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_DEADLINE, KafkaCompression,
    KafkaConfigError, KafkaSasl, KafkaSinkConfig, KafkaTarget, KafkaTls, MAX_PARTITIONS,
    RECORD_OVERHEAD_BYTES, SaslMechanism,
};

/// Client id the brokers see in their logs and quotas.
pub const CLIENT_ID: &str = "gse-dataserver";
/// Record header: the agent (`cloud:ip`) a record came from.
pub const HEADER_AGENT: &str = "gse_agent";
/// Record header: the agent's batch sequence number, decimal.
pub const HEADER_SEQ: &str = "gse_seq";
/// Record header: the record's position in the batch part, decimal.
pub const HEADER_INDEX: &str = "gse_index";
/// Record header: the record's data id, decimal.
pub const HEADER_DATA_ID: &str = "gse_data_id";
/// Record header: the local uid that wrote the record to the agent's
/// socket, decimal; only when known.
pub const HEADER_PEER_UID: &str = "gse_peer_uid";
/// Record header: that process's pid, decimal; only when known.
pub const HEADER_PEER_PID: &str = "gse_peer_pid";

/// A Kafka topic as a [`Sink`]. Cheap to share: one instance per route
/// target, called concurrently by the DataServer's connections.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    conn: Mutex<Option<Connection>>,
}

/// A live client and the partition clients made from it.
struct Connection {
    client: Client,
    partitions: HashMap<i32, Arc<PartitionClient>>,
}

/// Why one produce attempt failed, before it becomes a [`SinkError`].
#[derive(Debug)]
enum ProduceFailure {
    Kafka(KafkaError),
    Timeout(Duration),
}

// === impl KafkaSink ===

impl KafkaSink {
    /// A sink for a validated configuration. Does not connect: the first
    /// batch does, so a broker that is down at start-up is not an error here.
    pub fn new(config: KafkaSinkConfig) -> Self {
        KafkaSink {
            config,
            conn: Mutex::new(None),
        }
    }

    /// Validates `target` and builds the sink.
    pub fn from_target(target: KafkaTarget) -> Result<Self, KafkaConfigError> {
        target.validate().map(Self::new)
    }

    /// The sink of `route` (to a stream_to with `report_mode: kafka`), for
    /// the sink factory; the error lists every problem.
    pub fn from_route(stream_to: &StreamTo, route: &Route) -> Result<Self, String> {
        let target = KafkaTarget::from_route(stream_to, route)?;
        Self::from_target(target).map_err(|e| e.problems.join("; "))
    }

    pub fn config(&self) -> &KafkaSinkConfig {
        &self.config
    }

    /// The partition a batch from `source` goes to.
    pub fn partition_for(&self, source: &str) -> i32 {
        if self.config.partitions <= 1 {
            return 0;
        }
        (fnv1a(source.as_bytes()) % self.config.partitions as u64) as i32
    }

    /// Produces `batch`, request by request, to its partition.
    async fn produce(&self, batch: &Batch) -> Result<(), ProduceFailure> {
        let partition = self.partition_for(&batch.source);
        let client = self.partition_client(partition).await?;
        let mut start = 0;
        let cuts = request_cuts(
            &batch.records,
            batch.source.len(),
            self.config.max_request_bytes,
        );
        for end in cuts {
            match self
                .send(&client, to_kafka_records(batch, start, end))
                .await
            {
                // The brokers' limit is below ours: one record per request,
                // so only the records that are too large on their own go.
                Err(ProduceFailure::Kafka(e)) if is_too_large(&e) => {
                    self.send_singly(&client, batch, start, end).await?
                }
                other => other?,
            }
            start = end;
        }
        Ok(())
    }

    /// Sends `batch.records[start..end]` one per request, dropping (logged,
    /// counted) each record the brokers refuse as too large by itself.
    async fn send_singly(
        &self,
        client: &PartitionClient,
        batch: &Batch,
        start: usize,
        end: usize,
    ) -> Result<(), ProduceFailure> {
        for i in start..end {
            match self.send(client, to_kafka_records(batch, i, i + 1)).await {
                Err(ProduceFailure::Kafka(e)) if is_too_large(&e) => {
                    metrics::dropped_too_large(&self.config.name);
                    tracing::error!(
                        sink = %self.config.name,
                        topic = %self.config.topic,
                        agent = %batch.source,
                        seq = batch.seq,
                        bytes = batch.records[i].payload.len(),
                        error = %e,
                        "Kafka refuses this record as too large; it is dropped (raise the brokers' message.max.bytes to keep such records)."
                    );
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// One produce request, bounded by `request_timeout`.
    async fn send(
        &self,
        client: &PartitionClient,
        records: Vec<rskafka::record::Record>,
    ) -> Result<(), ProduceFailure> {
        let n = records.len();
        let bytes: usize = records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Vec::len))
            .sum();
        let began = Instant::now();
        let timeout = self.config.request_timeout;
        let compression = match self.config.compression {
            KafkaCompression::None => Compression::NoCompression,
            KafkaCompression::Gzip => Compression::Gzip,
            KafkaCompression::Lz4 => Compression::Lz4,
            KafkaCompression::Zstd => Compression::Zstd,
        };
        match tokio::time::timeout(timeout, client.produce(records, compression)).await {
            Ok(Ok(_offsets)) => {
                metrics::produced(&self.config.name, n, bytes, began.elapsed());
                Ok(())
            }
            Ok(Err(e)) => Err(ProduceFailure::Kafka(e)),
            Err(_) => Err(ProduceFailure::Timeout(timeout)),
        }
    }

    /// The client of `partition`, connecting first if needed. Connecting is
    /// serialised; producing is not.
    async fn partition_client(
        &self,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, ProduceFailure> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let client = self.bounded(self.connect()).await;
            metrics::connected(&self.config.name, client.is_ok());
            *guard = Some(Connection {
                client: client?,
                partitions: HashMap::new(),
            });
            tracing::info!(sink = %self.config.name, brokers = ?self.config.brokers, "Connected to Kafka.");
        }
        let conn = guard.as_mut().expect("connection set above");
        if let Some(p) = conn.partitions.get(&partition) {
            return Ok(Arc::clone(p));
        }
        let topic = self.config.topic.clone();
        let made = conn
            .client
            .partition_client(topic, partition, UnknownTopicHandling::Error);
        let p = Arc::new(self.bounded(made).await?);
        conn.partitions.insert(partition, Arc::clone(&p));
        Ok(p)
    }

    async fn connect(&self) -> Result<Client, KafkaError> {
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(self.config.retry_deadline),
        };
        let mut builder = ClientBuilder::new(self.config.brokers.clone())
            .client_id(CLIENT_ID)
            .backoff_config(backoff);
        if let Some(sasl) = &self.config.sasl {
            builder = builder.sasl_config(sasl.to_rskafka());
        }
        if let Some(tls) = &self.config.tls {
            // Built with the process's one crypto provider (aws-lc-rs).
            let config = gse_core::tls::ca_client_config(&tls.ca_file)
                .map_err(|e| KafkaError::InvalidResponse(format!("TLS to the brokers: {e}")))?;
            builder = builder.tls_config(config);
        }
        builder.build().await
    }

    /// Runs a client call under `request_timeout`.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, ProduceFailure> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(r) => r.map_err(ProduceFailure::Kafka),
            Err(_) => Err(ProduceFailure::Timeout(self.config.request_timeout)),
        }
    }

    /// Forgets the connection, so the next batch starts from the bootstrap
    /// brokers again (a broker restart, a moved leader, a new address).
    async fn disconnect(&self) {
        *self.conn.lock().await = None;
    }

    /// The error an operator reads: what failed, where, and what to do.
    fn sink_error(&self, batch: &Batch, failure: &ProduceFailure) -> SinkError {
        let c = &self.config;
        let target = format!("topic '{}' on {}", c.topic, c.brokers.join(","));
        let message = match failure {
            ProduceFailure::Timeout(t) => format!(
                "no answer from {target} within {t:?}; the agent keeps the batch and sends it again; check the brokers' health"
            ),
            ProduceFailure::Kafka(e) => match protocol_error(e) {
                Some(ProtocolError::UnknownTopicOrPartition) => format!(
                    "{target} does not exist (or lacks partition {}); the sink does not create topics: create it with {} partition(s)",
                    self.partition_for(&batch.source),
                    c.partitions
                ),
                Some(ProtocolError::SaslAuthenticationFailed)
                | Some(ProtocolError::TopicAuthorizationFailed) => format!(
                    "{target} refused our credentials ({e}); check sasl_username, sasl_passwd and sasl_mechanisms of the stream_to"
                ),
                _ => format!(
                    "could not produce to {target}: {e}; the agent keeps the batch and sends it again; check that the brokers in storage_address are up and reachable"
                ),
            },
        };
        SinkError::Store {
            sink: c.name.clone(),
            records: batch.records.len(),
            message,
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        match self.produce(batch).await {
            Ok(()) => Ok(()),
            Err(failure) => {
                metrics::produce_failed(&self.config.name);
                self.disconnect().await;
                let err = self.sink_error(batch, &failure);
                tracing::warn!(sink = %self.config.name, agent = %batch.source, seq = batch.seq, error = %err, "Kafka did not store a batch; it will be sent again.");
                Err(err)
            }
        }
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === request building ===

/// End indexes of consecutive record ranges, each at most `max_bytes` (by
/// [`record_size`]) unless it holds a single larger record.
fn request_cuts(records: &[Record], source_len: usize, max_bytes: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut size = 0;
    for (i, r) in records.iter().enumerate() {
        let s = record_size(r.payload.len(), source_len);
        if size > 0 && size + s > max_bytes {
            cuts.push(i);
            size = 0;
        }
        size += s;
    }
    if !records.is_empty() {
        cuts.push(records.len());
    }
    cuts
}

/// What a record weighs in a produce request: the payload, the agent as key
/// and as a header, the other headers (names and decimal values, at most
/// 128 bytes) and the record framing.
fn record_size(payload_len: usize, source_len: usize) -> usize {
    payload_len + 2 * source_len + 128 + RECORD_OVERHEAD_BYTES
}

/// Kafka records for `batch.records[start..end]`.
fn to_kafka_records(batch: &Batch, start: usize, end: usize) -> Vec<rskafka::record::Record> {
    let key = batch.source.as_bytes().to_vec();
    let seq = batch.seq.to_string().into_bytes();
    batch.records[start..end]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = BTreeMap::from([
                (HEADER_AGENT.to_owned(), key.clone()),
                (HEADER_SEQ.to_owned(), seq.clone()),
                (
                    HEADER_INDEX.to_owned(),
                    (start + i).to_string().into_bytes(),
                ),
                (
                    HEADER_DATA_ID.to_owned(),
                    r.data_id.to_string().into_bytes(),
                ),
            ]);
            let sender = [(HEADER_PEER_UID, r.peer_uid), (HEADER_PEER_PID, r.peer_pid)];
            for (name, value) in sender {
                if let Some(v) = value {
                    headers.insert(name.to_owned(), v.to_string().into_bytes());
                }
            }
            rskafka::record::Record {
                key: Some(key.clone()),
                value: Some(r.payload.to_vec()),
                headers,
                timestamp: timestamp(r.received_ms),
            }
        })
        .collect()
}

/// The record's Kafka timestamp: when the agent received it, or now if
/// that is out of chrono's range.
fn timestamp(ms: u64) -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    use rskafka::chrono::DateTime;
    let now = || {
        let since = std::time::UNIX_EPOCH.elapsed().unwrap_or_default();
        DateTime::from_timestamp_millis(since.as_millis() as i64).unwrap_or_default()
    };
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(now)
}

fn protocol_error(e: &KafkaError) -> Option<ProtocolError> {
    match e {
        KafkaError::ServerError { protocol_error, .. } => Some(*protocol_error),
        _ => None,
    }
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        protocol_error(e),
        Some(ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge)
    )
}

/// FNV-1a, 64 bit: a partitioner that stays the same across Rust releases
/// and processes (std's hasher promises neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

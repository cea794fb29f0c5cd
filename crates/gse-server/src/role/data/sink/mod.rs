//! The sinks of the data role (D5) and the one factory that turns a route
//! and its stream_to into an `Arc<dyn Sink>` ([`build`]).
//!
//! One sink per route target: `report_mode: file` -> [`file::FileSink`]
//! (JSON lines, one file per route), `redis` -> [`redis::RedisSink`]
//! (PUBLISH, or XADD to a stream), `kafka` -> [`kafka::KafkaSink`].
//! `pulsar` is accepted by the API but no sink is built for it. A route
//! whose sink cannot be built gets a
//! [`BrokenSink`] that refuses every batch with the reason, so its records
//! stay with the agents (spooled) instead of being lost; the route table
//! (`routes::table`) caches sinks and rebuilds them when a stream_to changes.

pub mod file;
pub mod kafka;
pub mod redis;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use gse_core::seams::{Batch, Sink, SinkError};

use super::routes::model::{ReportMode, Route, StreamTo};

/// What every sink may need from the node.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// `node.data_dir`: file sinks write under it.
    pub data_dir: PathBuf,
}

/// Why no sink could be made for a route.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error(
        "stream_to {stream_to_id} ({name:?}) has report_mode {mode}, which this server cannot send to; \
         use kafka, redis or file"
    )]
    Unsupported {
        stream_to_id: u32,
        name: String,
        mode: &'static str,
    },
    #[error("stream_to {stream_to_id} ({name:?}): {problem}")]
    Config {
        stream_to_id: u32,
        name: String,
        problem: String,
    },
}

/// Makes the sink of one route of channel `channel_id`.
pub fn build(
    ctx: &SinkContext,
    stream_to: &StreamTo,
    channel_id: u32,
    route: &Route,
) -> Result<Arc<dyn Sink>, BuildError> {
    let config_err = |problem: String| BuildError::Config {
        stream_to_id: stream_to.stream_to_id,
        name: stream_to.name.clone(),
        problem,
    };
    match stream_to.report_mode {
        ReportMode::File => {
            let sink =
                file::FileSink::new(ctx, stream_to, channel_id, route).map_err(config_err)?;
            Ok(Arc::new(sink))
        }
        ReportMode::Redis => {
            let sink = redis::RedisSink::new(stream_to, channel_id, route).map_err(config_err)?;
            Ok(Arc::new(sink))
        }
        ReportMode::Kafka => {
            let sink = kafka::KafkaSink::from_route(stream_to, route).map_err(config_err)?;
            Ok(Arc::new(sink))
        }
        ReportMode::Pulsar => Err(BuildError::Unsupported {
            stream_to_id: stream_to.stream_to_id,
            name: stream_to.name.clone(),
            mode: "pulsar",
        }),
    }
}

/// Stands in for a sink that could not be built: refuses every batch with
/// the reason, so the agents keep the records until the route is fixed.
pub struct BrokenSink {
    name: String,
    reason: String,
}

impl BrokenSink {
    pub fn new(name: &str, error: &BuildError) -> Self {
        BrokenSink {
            name: name.to_string(),
            reason: format!("{error}; fix or delete the route (records wait at the agents)"),
        }
    }
}

#[async_trait]
impl Sink for BrokenSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        Err(SinkError::Store {
            sink: self.name.clone(),
            records: batch.records.len(),
            message: self.reason.clone(),
        })
    }
}

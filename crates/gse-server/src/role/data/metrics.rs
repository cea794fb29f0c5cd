//! Data path metrics (C9), Prometheus through the `metrics` facade.
//!
//! Counted per batch, never per record. Label cardinality is bounded: the
//! first [`MAX_DATA_ID_LABELS`] data ids seen get their own `data_id` label,
//! later ones share `data_id="other"`; sink labels are stream_to/route names
//! (bounded by the route configuration).
//!
//! | metric | labels |
//! |---|---|
//! | `gse_data_records_in_total`, `gse_data_bytes_in_total` | data_id |
//! | `gse_data_records_out_total` | data_id, sink |
//! | `gse_data_unrouted_records_total` | data_id |
//! | `gse_data_sink_errors_total` | sink |
//! | `gse_data_latency_seconds` (histogram: now - agent receive time) | — |
//! | `gse_data_batches_total`, `gse_data_batches_refused_total` | server |
//! | `gse_data_agents` (gauge) | server |
//! | `gse_data_server_bytes_per_second` (gauge, last interval) | server |
//! | `gse_data_agent_moves_total` | — |
//! | `gse_data_pending_handshakes` (gauge: data links before DataHello) | — |
//! | `gse_data_connections_refused_total` (closed at accept) | reason |

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::SharedString;
use parking_lot::Mutex;

/// Data ids with a label of their own.
pub const MAX_DATA_ID_LABELS: usize = 1000;

/// The `data_id` label value of a data id.
pub fn data_id_label(data_id: u32) -> SharedString {
    static LABELS: OnceLock<Mutex<HashMap<u32, SharedString>>> = OnceLock::new();
    let mut labels = LABELS.get_or_init(Default::default).lock();
    if let Some(l) = labels.get(&data_id) {
        return l.clone();
    }
    if labels.len() >= MAX_DATA_ID_LABELS {
        return SharedString::const_str("other");
    }
    let l = SharedString::from(data_id.to_string());
    labels.insert(data_id, l.clone());
    l
}

/// Records of one data id arrived in one batch.
pub fn records_in(data_id: &SharedString, records: u64, bytes: u64) {
    metrics::counter!("gse_data_records_in_total", "data_id" => data_id.clone()).increment(records);
    metrics::counter!("gse_data_bytes_in_total", "data_id" => data_id.clone()).increment(bytes);
}

/// A sink stored records of one data id.
pub fn records_out(data_id: &SharedString, sink: &str, records: u64) {
    metrics::counter!("gse_data_records_out_total", "data_id" => data_id.clone(), "sink" => sink.to_string())
        .increment(records);
}

pub fn unrouted(data_id: &SharedString, records: u64) {
    metrics::counter!("gse_data_unrouted_records_total", "data_id" => data_id.clone())
        .increment(records);
}

pub fn sink_error(sink: &str) {
    metrics::counter!("gse_data_sink_errors_total", "sink" => sink.to_string()).increment(1);
}

/// End-to-end latency of a record, from the agent's receive time.
pub fn latency(received_ms: u64, now_ms: u64) {
    let secs = now_ms.saturating_sub(received_ms) as f64 / 1000.0;
    metrics::histogram!("gse_data_latency_seconds").record(secs);
}

pub fn batch(server: &str, stored: bool) {
    if stored {
        metrics::counter!("gse_data_batches_total", "server" => server.to_string()).increment(1);
    } else {
        metrics::counter!("gse_data_batches_refused_total", "server" => server.to_string())
            .increment(1);
    }
}

pub fn agents(server: &str, n: usize) {
    metrics::gauge!("gse_data_agents", "server" => server.to_string()).set(n as f64);
}

pub fn server_rate(server: &str, bytes_per_s: f64) {
    metrics::gauge!("gse_data_server_bytes_per_second", "server" => server.to_string())
        .set(bytes_per_s);
}

/// Data links closed at accept, over a pending-handshake cap (`reason`:
/// "over data.max_pending_handshakes[_per_ip]"); counted by the accept
/// loop (`gse_link::accept`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "gse_data_connections_refused_total";

pub fn agent_moved() {
    metrics::counter!("gse_data_agent_moves_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_id_labels_are_bounded() {
        let first = data_id_label(4_000_000_001);
        assert_eq!(first.as_ref(), "4000000001");
        for id in 0..(MAX_DATA_ID_LABELS as u32 + 10) {
            let _ = data_id_label(id);
        }
        assert_eq!(data_id_label(4_100_000_000).as_ref(), "other");
        assert_eq!(data_id_label(4_000_000_001).as_ref(), "4000000001");
    }
}

//! The Kafka sink's metrics. Labels are bounded: `sink` is a stream_to name
//! (a handful per cluster), `result` and `reason` are fixed words. Counted
//! per produce request, never per record.

use std::time::Duration;

/// Produce requests, by sink and result (`ok`, `error`).
pub const PRODUCE_REQUESTS_TOTAL: &str = "gse_data_kafka_produce_requests_total";
/// Records the brokers acknowledged, by sink.
pub const RECORDS_TOTAL: &str = "gse_data_kafka_records_total";
/// Payload bytes the brokers acknowledged, by sink.
pub const BYTES_TOTAL: &str = "gse_data_kafka_bytes_total";
/// Time of one produce request until the broker's ack, by sink.
pub const PRODUCE_SECONDS: &str = "gse_data_kafka_produce_seconds";
/// Records dropped because no broker would ever take them, by sink and reason.
pub const RECORDS_DROPPED_TOTAL: &str = "gse_data_kafka_records_dropped_total";
/// (Re)connections to the bootstrap brokers, by sink and result.
pub const CONNECTS_TOTAL: &str = "gse_data_kafka_connects_total";

pub fn produced(sink: &str, records: usize, bytes: usize, elapsed: Duration) {
    let sink = sink.to_owned();
    ::metrics::counter!(PRODUCE_REQUESTS_TOTAL, "sink" => sink.clone(), "result" => "ok")
        .increment(1);
    ::metrics::counter!(RECORDS_TOTAL, "sink" => sink.clone()).increment(records as u64);
    ::metrics::counter!(BYTES_TOTAL, "sink" => sink.clone()).increment(bytes as u64);
    ::metrics::histogram!(PRODUCE_SECONDS, "sink" => sink).record(elapsed.as_secs_f64());
}

pub fn produce_failed(sink: &str) {
    ::metrics::counter!(PRODUCE_REQUESTS_TOTAL, "sink" => sink.to_owned(), "result" => "error")
        .increment(1);
}

pub fn dropped_too_large(sink: &str) {
    ::metrics::counter!(RECORDS_DROPPED_TOTAL, "sink" => sink.to_owned(), "reason" => "too_large")
        .increment(1);
}

pub fn connected(sink: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    ::metrics::counter!(CONNECTS_TOTAL, "sink" => sink.to_owned(), "result" => result).increment(1);
}

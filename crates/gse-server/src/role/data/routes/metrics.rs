//! Metrics of the route table. No per-data-id labels here: the data path
//! counts records per data id itself.

/// Data ids that have at least one route, after the last rebuild.
pub const ROUTED_CHANNELS: &str = "gse_data_routed_channels";
/// Sinks the route table holds (one per route target).
pub const ROUTE_SINKS: &str = "gse_data_route_sinks";
/// Rebuilds of the route table (one per route or stream_to change).
pub const TABLE_REBUILDS_TOTAL: &str = "gse_data_route_table_rebuilds_total";

/// Records one rebuild of the table.
pub fn table_built(channels: usize, sinks: usize) {
    ::metrics::gauge!(ROUTED_CHANNELS).set(channels as f64);
    ::metrics::gauge!(ROUTE_SINKS).set(sinks as f64);
    ::metrics::counter!(TABLE_REBUILDS_TOTAL).increment(1);
}

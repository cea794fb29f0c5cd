//! The API role's metrics. Labels are bounded: `path` is an endpoint's
//! canonical path or "unknown", `code` an envelope code from a fixed set.

use std::time::Duration;

/// Requests answered, by endpoint and envelope code.
pub const REQUESTS_TOTAL: &str = "gse_api_requests_total";
/// Time from the request line to the answer, by endpoint.
pub const REQUEST_DURATION_SECONDS: &str = "gse_api_request_duration_seconds";

/// Label for requests that matched no route.
pub const UNKNOWN_PATH: &str = "unknown";

/// Counts one answered request.
pub fn record(path: &'static str, code: i64, elapsed: Duration) {
    ::metrics::counter!(REQUESTS_TOTAL, "path" => path, "code" => code.to_string()).increment(1);
    ::metrics::histogram!(REQUEST_DURATION_SECONDS, "path" => path).record(elapsed.as_secs_f64());
}

/// Connections refused at accept, by reason (`over api.max_connections`,
/// `over api.max_connections_per_ip`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "gse_api_connections_refused_total";

/// Counts one connection refused at accept.
pub fn connection_refused(reason: &'static str) {
    ::metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

//! The server's own view of the run, read from its `GET /metrics` at the
//! end (docs/API.md "Metrics and logs"): how long `start_script` took to
//! queue every RunScript, how long each batch write of task changes to the
//! store took, and how long the API took per call. These tell the server's
//! work apart from TLS, scheduling and polling in the bench's latencies.
//!
//! The page is read with [`crate::prom`].

use serde::Serialize;

use crate::prom::{Summary, summary};

const DISPATCH: &str = "gse_task_dispatch_seconds";
const STORE_FLUSH: &str = "gse_task_store_flush_seconds";
const API_DURATION: &str = "gse_api_request_duration_seconds";
const EXECUTE_PATH: &str = "path=\"/api/v2/task/extensions/async_execute_script\"";
const RESULTS_PATH: &str = "path=\"/api/v2/task/extensions/get_execute_script_result\"";

/// The server's histograms the bench reports.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct ServerMetrics {
    /// API call -> every RunScript queued on its link (`start_script`).
    dispatch: Summary,
    /// One batch of task changes written to SQLite.
    store_flush: Summary,
    /// The API's time for async_execute_script.
    api_execute: Summary,
    /// The API's time for get_execute_script_result.
    api_results: Summary,
}

impl ServerMetrics {
    /// Reads the figures out of a Prometheus text page; missing ones are 0.
    pub fn parse(text: &str) -> Self {
        ServerMetrics {
            dispatch: summary(text, DISPATCH, ""),
            store_flush: summary(text, STORE_FLUSH, ""),
            api_execute: summary(text, API_DURATION, EXECUTE_PATH),
            api_results: summary(text, API_DURATION, RESULTS_PATH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_summaries_by_name_and_label() {
        let page = "\
# TYPE gse_task_store_flush_seconds summary
gse_task_store_flush_seconds{quantile=\"0.5\"} 0.002
gse_task_store_flush_seconds{quantile=\"1\"} 0.030
gse_task_store_flush_seconds_sum 0.04
gse_task_store_flush_seconds_count 4
gse_api_request_duration_seconds_sum{path=\"/api/v2/task/extensions/async_execute_script\"} 0.5
gse_api_request_duration_seconds_count{path=\"/api/v2/task/extensions/async_execute_script\"} 5
gse_api_request_duration_seconds_sum{path=\"/healthz\"} 9
";
        let m = ServerMetrics::parse(page);
        let flush = Summary {
            count: 4,
            mean_ms: 10.0,
            max_ms: 30.0,
        };
        assert_eq!(m.store_flush, flush);
        assert_eq!((m.api_execute.count, m.api_execute.mean_ms), (5, 100.0));
        assert_eq!(m.dispatch, Summary::default());
    }
}

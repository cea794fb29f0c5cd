//! The server's own view of the run, read from its `GET /metrics` at the
//! end (docs/API.md "Metrics and logs"): how long `start_script` took to
//! queue every RunScript, how long each batch write of task changes to the
//! store took, and how long the API took per call. These tell the server's
//! work apart from TLS, scheduling and polling in the bench's latencies.
//!
//! The recorder renders histograms as summaries: `<name>_sum`,
//! `<name>_count` and `<name>{quantile="1"}` (the largest value kept).

use serde::Serialize;

const DISPATCH: &str = "gse_task_dispatch_seconds";
const STORE_FLUSH: &str = "gse_task_store_flush_seconds";
const API_DURATION: &str = "gse_api_request_duration_seconds";
const EXECUTE_PATH: &str = "path=\"/api/v2/task/extensions/async_execute_script\"";
const RESULTS_PATH: &str = "path=\"/api/v2/task/extensions/get_execute_script_result\"";

/// Count, mean and max of one server histogram, ms.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Summary {
    count: u64,
    mean_ms: f64,
    max_ms: f64,
}

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

/// The summary `name` among the lines whose labels contain `label`.
fn summary(text: &str, name: &str, label: &str) -> Summary {
    let (mut sum, mut count, mut max) = (0.0, 0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if !labels.contains(label) {
            continue;
        }
        match metric.strip_prefix(name) {
            Some("_sum") => sum += value,
            Some("_count") => count += value,
            Some("") if labels.contains("quantile=\"1\"") => max = f64::max(max, value),
            _ => {}
        }
    }
    Summary {
        count: count as u64,
        mean_ms: round(if count > 0.0 {
            1000.0 * sum / count
        } else {
            0.0
        }),
        max_ms: round(1000.0 * max),
    }
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
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

//! Metrics set-up for the gse processes that export them (gse-server,
//! gse-proxy): the `metrics` facade feeds a Prometheus recorder whose
//! handle each renders at `/metrics` (the server on its API, the proxy on
//! its `[metrics] listen` address). Logging set-up is [`crate::logging`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (tests): then this
            // handle renders nothing, which is acceptable there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

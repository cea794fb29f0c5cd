//! The task role's metrics. Labels are bounded: `status` is one of five
//! words, never an agent or a task id. Counted per batch where there is one.

use std::time::Duration;

use gse_core::task::{STATUS_DISCARDED, STATUS_FAILED, STATUS_SUCCESS, STATUS_TIMEOUT};

/// Script tasks started.
pub const TASKS_STARTED_TOTAL: &str = "gse_task_tasks_started_total";
/// Entries (agent, atomic task) that reached a final state, by status.
pub const ENTRIES_FINISHED_TOTAL: &str = "gse_task_entries_finished_total";
/// Time from the API call to every reachable agent's RunScript queued.
pub const DISPATCH_SECONDS: &str = "gse_task_dispatch_seconds";
/// Batches written to the state store, and how long each took.
pub const STORE_FLUSH_SECONDS: &str = "gse_task_store_flush_seconds";
/// Batches the state store refused (they are retried).
pub const STORE_FAILURES_TOTAL: &str = "gse_task_store_failures_total";

fn status_label(status: i32) -> &'static str {
    match status {
        STATUS_SUCCESS => "success",
        STATUS_TIMEOUT => "timeout",
        STATUS_DISCARDED => "discarded",
        STATUS_FAILED => "failed",
        _ => "other",
    }
}

pub fn task_started(dispatch: Duration) {
    ::metrics::counter!(TASKS_STARTED_TOTAL).increment(1);
    ::metrics::histogram!(DISPATCH_SECONDS).record(dispatch.as_secs_f64());
}

/// Counts finished entries, one counter update per status present.
pub fn entries_finished(statuses: &[i32]) {
    if statuses.is_empty() {
        return;
    }
    let mut counts: [(i32, u64); 5] = [
        (STATUS_SUCCESS, 0),
        (STATUS_TIMEOUT, 0),
        (STATUS_DISCARDED, 0),
        (STATUS_FAILED, 0),
        (-1, 0),
    ];
    for s in statuses {
        let slot = counts.iter().position(|(k, _)| k == s).unwrap_or(4);
        counts[slot].1 += 1;
    }
    for (status, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
        ::metrics::counter!(ENTRIES_FINISHED_TOTAL, "status" => status_label(status)).increment(n);
    }
}

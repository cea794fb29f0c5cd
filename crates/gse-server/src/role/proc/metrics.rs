//! The proc role's metrics. Labels are bounded: `code` is one of the
//! per-process codes of COMPAT §2.2 (anything else is "other").

/// Process tasks created by `operate_proc_multi`.
pub const TASKS_TOTAL: &str = "gse_proc_tasks_total";
/// Entries (operation, agent) that reached a final code, by code.
pub const ENTRIES_FINAL_TOTAL: &str = "gse_proc_entries_final_total";

fn code_label(code: i32) -> &'static str {
    match code {
        0 => "0",
        117 => "117",
        828 => "828",
        829 => "829",
        832 => "832",
        836 => "836",
        65535 => "65535",
        _ => "other",
    }
}

pub fn task_created() {
    ::metrics::counter!(TASKS_TOTAL).increment(1);
}

/// Counts one entry's final code.
pub fn entry_final(code: i32) {
    ::metrics::counter!(ENTRIES_FINAL_TOTAL, "code" => code_label(code)).increment(1);
}

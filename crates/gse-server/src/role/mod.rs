//! Server roles. Each owns one concern and talks to the others only through
//! the seams (state store, registry) and the handles `node` passes it.

pub mod alarm;
pub mod api;
pub mod data;
pub mod file;
pub(crate) mod jobs;
pub mod link;
pub mod message;
pub mod proc;
pub mod task;

/// A new GSE-style task id: `GSETASK:<kind>:<time digits><random>:<seq>`
/// (`S` script tasks, `F` file transfers), unique per node run by `seq`.
pub(crate) fn gse_task_id(kind: char, seq: u64) -> String {
    let stamp: String = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let random = rand::random::<u32>() % 1_000_000;
    format!("GSETASK:{kind}:{stamp}{random:06}:{seq}")
}

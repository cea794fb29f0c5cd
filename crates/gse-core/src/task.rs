//! Script-task status and error codes, as bk-job reads them (COMPAT.md §2.1,
//! §2.4, §3). Agents report them in `TaskStatus`; the API returns them in
//! `get_execute_script_result`. One place, so both sides agree.
//!
//! Job reads `error_code` first: anything but 0/115/126 is a finished
//! failure mapped by its code table; then `status`.

/// `status`: the task was handed to the agent.
pub const STATUS_DISPATCHED: i32 = 0;
/// `status`: running.
pub const STATUS_RUNNING: i32 = 1;
/// `status`: exited 0.
pub const STATUS_SUCCESS: i32 = 2;
/// `status`: killed after `timeout_seconds`.
pub const STATUS_TIMEOUT: i32 = 3;
/// `status`: not run (an earlier atomic task failed) or terminated.
pub const STATUS_DISCARDED: i32 = 4;
/// `status`: failed (non-zero exit, or an error in `error_code`).
pub const STATUS_FAILED: i32 = 5;

/// `error_code`: finished (whatever the exit code).
pub const ERR_NONE: i32 = 0;
/// `error_code`: could not start the process (Job: task execution error).
pub const ERR_SPAWN: i32 = 101;
/// `error_code`: could not write a script file on the target.
pub const ERR_SCRIPT_WRITE: i32 = 102;
/// `error_code`: still running / queued.
pub const ERR_RUNNING: i32 = 115;
/// `error_code`: the agent is unknown, offline, or lost during the task.
pub const ERR_AGENT_DOWN: i32 = 117;
/// `error_code`: refused by a blocking dangerous-operation rule (T7).
pub const ERR_DANGER_BLOCKED: i32 = 118;
/// `error_code`: the named user does not exist on the target (T4).
pub const ERR_NO_SUCH_USER: i32 = 122;
/// `error_code`: terminated by `async_terminate_execute_script`.
pub const ERR_TERMINATED: i32 = 126;

/// Default output kept per atomic task (bk-job's
/// MAX_GSE_ATOMIC_TASK_CONTENT_BYTES).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 5 * 1024 * 1024;

/// Whether an (status, error_code) pair is final: nothing more will change.
pub fn is_final(status: i32, error_code: i32) -> bool {
    !matches!(status, STATUS_DISPATCHED | STATUS_RUNNING)
        || !matches!(error_code, ERR_NONE | ERR_RUNNING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finality() {
        assert!(!is_final(STATUS_DISPATCHED, ERR_RUNNING));
        assert!(!is_final(STATUS_RUNNING, ERR_RUNNING));
        assert!(is_final(STATUS_SUCCESS, ERR_NONE));
        assert!(is_final(STATUS_FAILED, ERR_AGENT_DOWN));
        assert!(is_final(STATUS_DISPATCHED, ERR_AGENT_DOWN));
        assert!(is_final(STATUS_DISCARDED, ERR_TERMINATED));
    }
}

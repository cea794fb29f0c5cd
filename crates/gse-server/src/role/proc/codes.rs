//! Per-process error codes of the operate results (COMPAT §2.2, nodeman's
//! `GseDataErrCode`) and the envelope code of a queued task.

/// Finished.
pub const CODE_OK: i32 = 0;
/// Still running; poll again.
pub const CODE_RUNNING: i32 = 115;
/// The agent is unknown, offline, or was lost before it answered.
pub const CODE_AGENT_ABNORMAL: i32 = 117;
/// An op type GSE does not know.
pub const CODE_UNKNOWN_OP: i32 = 832;
/// The operation failed (and the agent's no-answer timeout).
pub const CODE_FAILED: i32 = 65535;
/// Envelope code of `get_proc_operate_result_v2` while nothing of the task
/// was dispatched yet; nodeman polls again.
pub const ENVELOPE_QUEUED: i64 = 1_000_115;

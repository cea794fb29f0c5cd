//! The file-transfer endpoints bk-job calls (F10, COMPAT.md §2.1):
//! `async_transfer_file`, `get_transfer_file_result`,
//! `async_terminate_transfer_file`; and bk-cmdb's content push (COMPAT
//! §2.2b): `async_push_file` and `async/get_transfer_file_result`.
//!
//! Each reads its request ([`file_request`](super::file_request)), calls the
//! file role, and shapes the answer as bk-job reads it:
//! `data = {"result": ...}`. The file role does the work; nothing here
//! talks to agents or the store.

use std::sync::Arc;

use gse_core::seams::state_store::FileEntryRecord;
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use super::{file_request, task_request};
use crate::role::file::FileService;

/// The `protover` of every entry: 2, the protocol without "valuekey".
const PROTOVER: u32 = 2;

fn service(ctx: &ApiContext) -> Result<&Arc<FileService>, ApiError> {
    ctx.files.as_ref().ok_or(ApiError::FilesUnavailable)
}

/// `data = {"result": {"task_id": ...}}`, the answer of every async call.
fn task_answer(task_id: &str) -> Value {
    json!({ "result": { "task_id": task_id } })
}

/// `async_transfer_file`, for the app `caller` (pass-throughs are allowed
/// per app).
pub async fn transfer_file(
    ctx: &ApiContext,
    caller: &str,
    body: &Fields,
) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let limits = file_request::Limits::new(ctx.config.max_hosts_per_call, files.config());
    let spec = file_request::transfer(body, &limits)?;
    let task_id = files.start_transfer(spec, caller).await?;
    Ok(task_answer(&task_id))
}

/// One entry of `get_transfer_file_result`, as bk-job's
/// `AtomicFileTaskResult` reads it.
#[derive(Serialize)]
struct FileResult<'a> {
    error_code: i32,
    error_msg: &'a str,
    content: Content<'a>,
}

/// bk-job's `AtomicFileTaskResultContent`, plus our `bytes_p2p`,
/// `bytes_direct` and `p2p_fallback` (bk-job's Jackson ignores unknown
/// fields, COMPAT.md §2.0). Times are unix ms, `speed` KB/s, `size` bytes.
#[derive(Serialize)]
struct Content<'a> {
    mode: u8,
    /// `"upload"` (mode 0) or `"download"` (mode 1), as bk-cmdb and bscp
    /// read it.
    r#type: &'static str,
    source_agent_id: &'a str,
    source_container_id: &'a str,
    source_file_dir: &'a str,
    source_file_name: &'a str,
    dest_agent_id: &'a str,
    dest_container_id: &'a str,
    dest_file_dir: &'a str,
    dest_file_name: &'a str,
    progress: u32,
    speed: u64,
    size: u64,
    status: i32,
    status_info: &'a str,
    start_time: u64,
    end_time: u64,
    protover: u32,
    bytes_p2p: u64,
    bytes_direct: u64,
    p2p_fallback: &'a str,
}

impl<'a> FileResult<'a> {
    fn new(e: &'a FileEntryRecord) -> Self {
        FileResult {
            error_code: e.error_code,
            error_msg: &e.error_msg,
            content: Content {
                mode: e.mode,
                r#type: if e.mode == 0 { "upload" } else { "download" },
                source_agent_id: &e.source_agent_id,
                source_container_id: &e.source_container_id,
                source_file_dir: &e.source_file_dir,
                source_file_name: &e.source_file_name,
                dest_agent_id: &e.dest_agent_id,
                dest_container_id: &e.dest_container_id,
                dest_file_dir: &e.dest_file_dir,
                dest_file_name: &e.dest_file_name,
                progress: e.progress,
                speed: e.speed_kbps,
                size: e.size,
                status: e.status,
                status_info: &e.status_info,
                start_time: e.start_ms,
                end_time: e.end_ms,
                protover: PROTOVER,
                bytes_p2p: e.bytes_p2p,
                bytes_direct: e.bytes_direct,
                p2p_fallback: &e.p2p_fallback,
            },
        }
    }
}

pub async fn get_transfer_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let task_id = task_request::task_id(body)?;
    let agents = file_request::agent_names(body, ctx.config.max_hosts_per_call)?;
    let entries = files.results(&task_id, agents.as_deref()).await?;
    let list: Vec<FileResult<'_>> = entries.iter().map(FileResult::new).collect();
    Ok(json!({ "result": list }))
}

/// `async_push_file`: small files given by their content, written by the
/// named agents as a transfer's targets install files (no source agent:
/// this node serves the bytes).
pub async fn push_file(ctx: &ApiContext, caller: &str, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let spec = super::push_request::push(body, ctx.config.max_hosts_per_call)?;
    let task_id = files.start_transfer(spec, caller).await?;
    Ok(task_answer(&task_id))
}

/// `async/get_transfer_file_result` (bk-cmdb): `get_transfer_file_result`'s
/// answer, asked by `agent_id_list`.
pub async fn get_push_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let (task_id, agents) = super::push_request::result_query(body, ctx.config.max_hosts_per_call)?;
    let entries = files.results(&task_id, agents.as_deref()).await?;
    let list: Vec<FileResult<'_>> = entries.iter().map(FileResult::new).collect();
    Ok(json!({ "result": list }))
}

pub async fn terminate_transfer(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let task_id = task_request::task_id(body)?;
    let agents = file_request::agent_names(body, ctx.config.max_hosts_per_call)?;
    files.terminate(&task_id, agents.as_deref()).await?;
    Ok(task_answer(&task_id))
}

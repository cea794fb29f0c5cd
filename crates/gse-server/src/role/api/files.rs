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
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use super::file_request::{self, TransferFile, TransferQuery};
use super::openapi::{Shape, answer};
use super::push_request::{self, PushFile, PushResultQuery};
use crate::role::file::FileService;

/// The `protover` of every entry: 2, the protocol without "valuekey".
const PROTOVER: u32 = 2;

fn service(ctx: &ApiContext) -> Result<&Arc<FileService>, ApiError> {
    ctx.files.as_ref().ok_or(ApiError::FilesUnavailable)
}

pub fn shape_transfer() -> Shape {
    Shape::of::<TransferFile, FileTaskStarted>()
}

pub fn shape_result() -> Shape {
    Shape::of::<TransferQuery, FileResults<'static>>()
}

pub fn shape_terminate() -> Shape {
    Shape::of::<TransferQuery, FileTaskStarted>()
}

pub fn shape_push() -> Shape {
    Shape::of::<PushFile, FileTaskStarted>()
}

pub fn shape_push_result() -> Shape {
    Shape::of::<PushResultQuery, FileResults<'static>>()
}

/// `data = {"result": {"task_id": ...}}`, the answer of every async call.
#[derive(Serialize, ToSchema)]
struct FileTaskStarted {
    result: FileTaskId,
}

#[derive(Serialize, ToSchema)]
struct FileTaskId {
    /// The transfer's id (`GSETASK:F:...`), to poll or terminate it with.
    task_id: String,
}

fn task_answer(task_id: String) -> Result<Value, ApiError> {
    answer(&FileTaskStarted {
        result: FileTaskId { task_id },
    })
}

/// `data = {"result": [...]}` of both polls: one entry per upload (one per
/// task) and per download (one per target of a task), in that order.
#[derive(Serialize, ToSchema)]
struct FileResults<'a> {
    result: Vec<FileResult<'a>>,
}

fn results(entries: &[FileEntryRecord]) -> Result<Value, ApiError> {
    answer(&FileResults {
        result: entries.iter().map(FileResult::new).collect(),
    })
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
    task_answer(task_id)
}

/// One entry of `get_transfer_file_result`, as bk-job's
/// `AtomicFileTaskResult` reads it.
#[derive(Serialize, ToSchema)]
struct FileResult<'a> {
    /// 115 while running, 0 done, 126 terminated, else why it failed
    /// (docs/API.md).
    error_code: i32,
    error_msg: &'a str,
    content: FileResultContent<'a>,
}

/// bk-job's `AtomicFileTaskResultContent`, plus our `bytes_p2p`,
/// `bytes_direct` and `p2p_fallback` (bk-job's Jackson ignores unknown
/// fields, COMPAT.md §2.0). Times are unix ms, `speed` KB/s, `size` bytes.
#[derive(Serialize, ToSchema)]
struct FileResultContent<'a> {
    /// 0 = upload (the source's side), 1 = download (one target's side).
    mode: u8,
    /// `"upload"` (mode 0) or `"download"` (mode 1), as bk-cmdb and bscp
    /// read it.
    #[schema(value_type = String, pattern = "^(upload|download)$")]
    r#type: &'static str,
    /// The source as the caller named it (empty for a content push).
    source_agent_id: &'a str,
    source_container_id: &'a str,
    /// The source's `store_dir` and `file_name` as sent.
    source_file_dir: &'a str,
    source_file_name: &'a str,
    /// The target as the caller named it (empty for uploads).
    dest_agent_id: &'a str,
    dest_container_id: &'a str,
    dest_file_dir: &'a str,
    dest_file_name: &'a str,
    /// 0-100.
    progress: u32,
    /// KB/s.
    speed: u64,
    /// Bytes of the task's files.
    size: u64,
    /// 0 waiting, 1 running, 2 success, 3 timeout, 4 terminated, 5 failed.
    status: i32,
    status_info: &'a str,
    /// Unix ms; 0 = not yet.
    start_time: u64,
    /// Unix ms; 0 = not yet.
    end_time: u64,
    /// Always 2: the protocol without "valuekey".
    protover: u32,
    /// Downloads: bytes that came from peers.
    bytes_p2p: u64,
    /// Downloads: bytes that came direct through the node.
    bytes_direct: u64,
    /// Downloads: why pieces meant for peers went direct through the node,
    /// as the target reported it; empty when none did.
    p2p_fallback: &'a str,
}

impl<'a> FileResult<'a> {
    fn new(e: &'a FileEntryRecord) -> Self {
        FileResult {
            error_code: e.error_code,
            error_msg: &e.error_msg,
            content: FileResultContent {
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
    let (task_id, agents) = file_request::query(body, ctx.config.max_hosts_per_call)?;
    let entries = files.results(&task_id, agents.as_deref()).await?;
    results(&entries)
}

/// `async_push_file`: small files given by their content, written by the
/// named agents as a transfer's targets install files (no source agent:
/// this node serves the bytes).
pub async fn push_file(ctx: &ApiContext, caller: &str, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let spec = push_request::push(body, ctx.config.max_hosts_per_call)?;
    let task_id = files.start_transfer(spec, caller).await?;
    task_answer(task_id)
}

/// `async/get_transfer_file_result` (bk-cmdb): `get_transfer_file_result`'s
/// answer, asked by `agent_id_list`.
pub async fn get_push_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let (task_id, agents) = push_request::result_query(body, ctx.config.max_hosts_per_call)?;
    let entries = files.results(&task_id, agents.as_deref()).await?;
    results(&entries)
}

pub async fn terminate_transfer(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let files = service(ctx)?;
    let (task_id, agents) = file_request::query(body, ctx.config.max_hosts_per_call)?;
    files.terminate(&task_id, agents.as_deref()).await?;
    task_answer(task_id)
}

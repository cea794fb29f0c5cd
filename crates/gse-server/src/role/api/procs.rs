//! The plugin-process endpoints bk-nodeman calls (A4, D2, C8; COMPAT.md
//! §2.2): `operate_proc_multi` (and the legacy single `operate_proc`),
//! `get_proc_operate_result_v2`, `get_proc_status_v2`.
//!
//! Each reads its typed request ([`proc_request`](super::proc_request)),
//! calls the proc role and answers a typed answer, shaped as nodeman reads
//! it. While a task is still queued its result answers envelope code
//! 1000115 (nodeman polls again) with every entry at 115.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use super::openapi::{Shape, answer};
use super::proc_request::{self, OperateProcMulti, ProcOperation, ProcStatusQuery, ProcTaskQuery};
use crate::role::proc::{Answer, ProcService, ProcView};

pub fn shape_multi() -> Shape {
    Shape::of::<OperateProcMulti, ProcTaskCreated>()
}

pub fn shape_one() -> Shape {
    Shape::of::<ProcOperation, ProcTaskCreated>()
}

pub fn shape_result() -> Shape {
    Shape::of::<ProcTaskQuery, ProcResults>()
}

pub fn shape_status() -> Shape {
    Shape::of::<ProcStatusQuery, ProcStatusAnswer<'static>>()
}

/// The process operation task created.
#[derive(Serialize, ToSchema)]
struct ProcTaskCreated {
    /// Poll it with `get_proc_operate_result_v2`.
    task_id: String,
}

/// Every entry of the task by `"<agent>:<namespace>:<name>"`, the agent as
/// the caller named it. While nothing of the task was dispatched yet the
/// call fails with envelope code 1000115 and these entries, all at 115, as
/// its `data`.
#[derive(Serialize, ToSchema)]
struct ProcResults(BTreeMap<String, Answer>);

/// `get_proc_status_v2`'s answer: one entry per agent asked.
#[derive(Serialize, ToSchema)]
struct ProcStatusAnswer<'a> {
    proc_infos: Vec<ProcInfo<'a>>,
}

fn service(ctx: &ApiContext) -> Result<&Arc<ProcService>, ApiError> {
    ctx.procs.as_ref().ok_or(ApiError::ProcsUnavailable)
}

/// `operate_proc_multi`: `data = {task_id}`.
pub async fn operate_multi(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let ops = proc_request::operate_multi(body, ctx.config.max_hosts_per_call)?;
    answer(&ProcTaskCreated {
        task_id: procs.operate(ops),
    })
}

/// The legacy single-operation `operate_proc`: the body is one operation.
pub async fn operate_one(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let ops = proc_request::operate_one(body, ctx.config.max_hosts_per_call)?;
    answer(&ProcTaskCreated {
        task_id: procs.operate(ops),
    })
}

/// `get_proc_operate_result_v2`: `data = {"<agent>:<namespace>:<name>":
/// {error_code, error_msg, content}}`.
pub async fn operate_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let task_id = proc_request::task_id(body)?;
    let results = procs.results(&task_id)?;
    let data = answer(&ProcResults(results.answers))?;
    if results.queued {
        return Err(ApiError::ProcTaskQueued { task_id, data });
    }
    Ok(data)
}

/// One entry of `proc_infos`, field for field as nodeman reads it (`host`
/// must be present: nodeman writes into it).
#[derive(Serialize, ToSchema)]
struct ProcInfo<'a> {
    /// The agent as the caller named it.
    bk_agent_id: &'a str,
    host: ProcInfoHost<'a>,
    meta: ProcInfoMeta<'a>,
    /// 0 unregistered (nobody reported it), 1 running, 2 stopped.
    status: u32,
    /// Whether the agent hosts it (restarts it when it exits).
    isauto: bool,
    version: &'a str,
    pid: u32,
    /// Unix ms of the agent's last report; 0 = never reported.
    report_time: u64,
}

/// The agent's address; empty ip and cloud 0 when the agent is unknown.
#[derive(Serialize, ToSchema)]
struct ProcInfoHost<'a> {
    ip: &'a str,
    bk_cloud_id: i64,
}

/// The plugin.
#[derive(Serialize, ToSchema)]
struct ProcInfoMeta<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
}

impl<'a> ProcInfo<'a> {
    fn new(v: &'a ProcView) -> Self {
        ProcInfo {
            bk_agent_id: &v.bk_agent_id,
            host: ProcInfoHost {
                ip: &v.ip,
                bk_cloud_id: v.bk_cloud_id,
            },
            meta: ProcInfoMeta {
                namespace: &v.namespace,
                name: &v.name,
                labels: &v.labels,
            },
            status: v.status,
            isauto: v.isauto,
            version: &v.version,
            pid: v.pid,
            report_time: v.report_time,
        }
    }
}

/// `get_proc_status_v2`: `data = {proc_infos: [...]}`, one per agent asked.
pub async fn proc_status(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let q = proc_request::status_query(body, ctx.config.max_hosts_per_call)?;
    let views = procs.status(&q.namespace, &q.name, &q.agents).await?;
    answer(&ProcStatusAnswer {
        proc_infos: views.iter().map(ProcInfo::new).collect(),
    })
}

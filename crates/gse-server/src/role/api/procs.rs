//! The plugin-process endpoints bk-nodeman calls (A4, D2, C8; COMPAT.md
//! §2.2): `operate_proc_multi` (and the legacy single `operate_proc`),
//! `get_proc_operate_result_v2`, `get_proc_status_v2`.
//!
//! Each reads its request ([`proc_request`](super::proc_request)), calls
//! the proc role and shapes the answer as nodeman reads it. While a task
//! is still queued its result answers envelope code 1000115 (nodeman polls
//! again) with every entry at 115.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use super::proc_request;
use crate::role::proc::{ProcService, ProcView};

fn service(ctx: &ApiContext) -> Result<&Arc<ProcService>, ApiError> {
    ctx.procs.as_ref().ok_or(ApiError::ProcsUnavailable)
}

/// `operate_proc_multi`: `data = {task_id}`.
pub async fn operate_multi(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let ops = proc_request::operate_multi(body, ctx.config.max_hosts_per_call)?;
    Ok(json!({ "task_id": procs.operate(ops) }))
}

/// The legacy single-operation `operate_proc`: the body is one operation.
pub async fn operate_one(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let ops = proc_request::operate_one(body, ctx.config.max_hosts_per_call)?;
    Ok(json!({ "task_id": procs.operate(ops) }))
}

/// `get_proc_operate_result_v2`: `data = {"<agent>:<namespace>:<name>":
/// {error_code, error_msg, content}}`.
pub async fn operate_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let procs = service(ctx)?;
    let task_id = proc_request::task_id(body)?;
    let results = procs.results(&task_id)?;
    let data: Map<String, Value> = results
        .answers
        .into_iter()
        .map(|(k, a)| (k, serde_json::to_value(a).unwrap_or(Value::Null)))
        .collect();
    if results.queued {
        return Err(ApiError::ProcTaskQueued {
            task_id,
            data: Value::Object(data),
        });
    }
    Ok(Value::Object(data))
}

/// One entry of `proc_infos`, field for field as nodeman reads it (`host`
/// must be present: nodeman writes into it).
#[derive(Serialize)]
struct ProcInfo<'a> {
    bk_agent_id: &'a str,
    host: Host<'a>,
    meta: Meta<'a>,
    status: u32,
    isauto: bool,
    version: &'a str,
    pid: u32,
    /// Unix ms of the agent's last report; 0 = never reported.
    report_time: u64,
}

#[derive(Serialize)]
struct Host<'a> {
    ip: &'a str,
    bk_cloud_id: i64,
}

#[derive(Serialize)]
struct Meta<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> ProcInfo<'a> {
    fn new(v: &'a ProcView) -> Self {
        ProcInfo {
            bk_agent_id: &v.bk_agent_id,
            host: Host {
                ip: &v.ip,
                bk_cloud_id: v.bk_cloud_id,
            },
            meta: Meta {
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
    let infos: Vec<ProcInfo<'_>> = views.iter().map(ProcInfo::new).collect();
    Ok(json!({ "proc_infos": infos }))
}

//! The script-task endpoints bk-job calls (A4, COMPAT.md §2.1):
//! `async_execute_script`, `get_execute_script_result`,
//! `async_terminate_execute_script`.
//!
//! Each reads its typed request ([`task_request`](super::task_request)),
//! calls the task role, and answers a typed struct shaped as bk-job reads
//! it: `data = {"result": ...}`. The task role does the work; nothing here
//! talks to agents or the store.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::body::{Fields, typed};
use super::error::ApiError;
use super::openapi::{Shape, answer};
use super::task_request::{
    self, ExecuteScriptRequest, GetScriptResultRequest, TerminateScriptRequest,
};
use crate::role::task::{EntryView, MAX_ANSWER_SCREEN_BYTES, TaskService};

pub fn shape_execute() -> Shape {
    Shape::of::<ExecuteScriptRequest, ScriptTaskAnswer>()
}

pub fn shape_result() -> Shape {
    Shape::of::<GetScriptResultRequest, ScriptResults>()
}

pub fn shape_terminate() -> Shape {
    Shape::of::<TerminateScriptRequest, ScriptTaskAnswer>()
}

fn service(ctx: &ApiContext) -> Result<&Arc<TaskService>, ApiError> {
    ctx.tasks.as_ref().ok_or(ApiError::TasksUnavailable)
}

/// The answer of `async_execute_script` and
/// `async_terminate_execute_script`: `{"result": {"task_id": ...}}`.
#[derive(Serialize, ToSchema)]
struct ScriptTaskAnswer {
    result: ScriptTaskId,
}

/// The task a call started or stopped.
#[derive(Serialize, ToSchema)]
struct ScriptTaskId {
    /// `GSETASK:S:...`: what polls and terminates name.
    task_id: String,
}

fn task_answer(task_id: String) -> Result<Value, ApiError> {
    answer(&ScriptTaskAnswer {
        result: ScriptTaskId { task_id },
    })
}

pub async fn execute_script(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let req: ExecuteScriptRequest = typed(body)?;
    let spec = task_request::execute(req, ctx.config.max_hosts_per_call)?;
    let task_id = tasks.start_script(spec).await?;
    task_answer(task_id)
}

/// The answer of `get_execute_script_result` (bk-job's
/// `ScriptTaskResult`): `{"result": [...]}`.
#[derive(Serialize, ToSchema)]
struct ScriptResults {
    /// One entry per (agent, atomic task) asked for and known, in the
    /// poll's order.
    result: Vec<ScriptResult>,
}

/// One entry of `get_execute_script_result`, field for field as bk-job's
/// `ScriptExecuteObjectTaskResult` reads it.
#[derive(Serialize, ToSchema)]
struct ScriptResult {
    /// As the poll named the agent.
    bk_agent_id: String,
    /// Empty for the host itself.
    bk_container_id: String,
    atomic_task_id: u32,
    /// 0 dispatched, 1 running, 2 success, 3 timeout, 4 discarded, 5 failed.
    status: i32,
    /// 0 finished, 115 running, 126 forcibly terminated, else an error.
    error_code: i32,
    error_msg: String,
    /// Unix time, ms; 0 before the start.
    start_time: u64,
    /// Unix time, ms; 0 before the end.
    end_time: u64,
    script_exit_code: i32,
    /// The task's `tag`.
    tag: String,
    /// The log from the asked offset: UTF-8, at most the asked limit of
    /// bytes.
    screen: String,
}

impl From<EntryView> for ScriptResult {
    fn from(e: EntryView) -> Self {
        ScriptResult {
            bk_agent_id: e.bk_agent_id,
            bk_container_id: e.bk_container_id,
            atomic_task_id: e.atomic_task_id,
            status: e.status,
            error_code: e.error_code,
            error_msg: e.error_msg,
            start_time: e.start_ms,
            end_time: e.end_ms,
            script_exit_code: e.exit_code,
            tag: e.tag,
            screen: e.screen,
        }
    }
}

pub async fn get_script_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let req: GetScriptResultRequest = typed(body)?;
    let (task_id, query) = task_request::result_query(req, ctx.config.max_hosts_per_call)?;
    // Screens take at most half the answer cap: the rest is room for the
    // entries' other fields and for JSON escaping.
    let budget = MAX_ANSWER_SCREEN_BYTES.min(ctx.config.max_response_bytes / 2);
    let entries = tasks.results_within(&task_id, &query, budget).await?;
    answer(&ScriptResults {
        result: entries.into_iter().map(ScriptResult::from).collect(),
    })
}

pub async fn terminate_script(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let req: TerminateScriptRequest = typed(body)?;
    let (task_id, targets) = task_request::terminate(req, ctx.config.max_hosts_per_call)?;
    tasks.terminate(&task_id, targets.as_deref()).await?;
    task_answer(task_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::task::TaskError;

    #[test]
    fn a_task_too_large_is_1000400_naming_the_field_to_change() {
        for field in ["scripts", "agents[].user"] {
            let api = ApiError::from(TaskError::TooLarge {
                field,
                problem: "300 distinct users make 314572800 bytes".into(),
                bytes: 1,
                limit: 0,
            });
            assert_eq!(api.code(), 1000400);
            let text = api.to_string();
            assert!(text.contains(field) && text.contains("314572800"), "{text}");
        }
    }
}

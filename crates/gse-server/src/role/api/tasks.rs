//! The script-task endpoints bk-job calls (A4, COMPAT.md §2.1):
//! `async_execute_script`, `get_execute_script_result`,
//! `async_terminate_execute_script`.
//!
//! Each reads its request ([`task_request`](super::task_request)), calls the
//! task role, and shapes the answer as bk-job reads it:
//! `data = {"result": ...}`. The task role does the work; nothing here
//! talks to agents or the store.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use super::task_request;
use crate::role::task::{EntryView, MAX_ANSWER_SCREEN_BYTES, TaskService};

fn service(ctx: &ApiContext) -> Result<&Arc<TaskService>, ApiError> {
    ctx.tasks.as_ref().ok_or(ApiError::TasksUnavailable)
}

/// `data = {"result": {"task_id": ...}}`, the answer of every async call.
fn task_answer(task_id: &str) -> Value {
    json!({ "result": { "task_id": task_id } })
}

pub async fn execute_script(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let spec = task_request::execute(body, ctx.config.max_hosts_per_call)?;
    let task_id = tasks.start_script(spec).await?;
    Ok(task_answer(&task_id))
}

/// One entry of `get_execute_script_result`, field for field as bk-job's
/// `ScriptExecuteObjectTaskResult` reads it. Times are unix ms.
#[derive(Serialize)]
struct ScriptResult<'a> {
    bk_agent_id: &'a str,
    bk_container_id: &'a str,
    atomic_task_id: u32,
    status: i32,
    error_code: i32,
    error_msg: &'a str,
    start_time: u64,
    end_time: u64,
    script_exit_code: i32,
    tag: &'a str,
    screen: &'a str,
}

impl<'a> ScriptResult<'a> {
    fn new(e: &'a EntryView) -> Self {
        ScriptResult {
            bk_agent_id: &e.bk_agent_id,
            bk_container_id: &e.bk_container_id,
            atomic_task_id: e.atomic_task_id,
            status: e.status,
            error_code: e.error_code,
            error_msg: &e.error_msg,
            start_time: e.start_ms,
            end_time: e.end_ms,
            script_exit_code: e.exit_code,
            tag: &e.tag,
            screen: &e.screen,
        }
    }
}

pub async fn get_script_result(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let task_id = task_request::task_id(body)?;
    let query = task_request::result_query(body, ctx.config.max_hosts_per_call)?;
    // Screens take at most half the answer cap: the rest is room for the
    // entries' other fields and for JSON escaping.
    let budget = MAX_ANSWER_SCREEN_BYTES.min(ctx.config.max_response_bytes / 2);
    let entries = tasks.results_within(&task_id, &query, budget).await?;
    let list: Vec<ScriptResult<'_>> = entries.iter().map(ScriptResult::new).collect();
    Ok(json!({ "result": list }))
}

pub async fn terminate_script(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let tasks = service(ctx)?;
    let task_id = task_request::task_id(body)?;
    let targets = task_request::terminate_targets(body, ctx.config.max_hosts_per_call)?;
    tasks.terminate(&task_id, targets.as_deref()).await?;
    Ok(task_answer(&task_id))
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

//! Reading the script-task requests (COMPAT.md §2.1) into the task role's
//! types, checking every bound, and naming the field that breaks one.
//!
//! Shapes are bk-job's: `agents[{bk_agent_id, bk_container_id?, user?, pwd?}]`,
//! `scripts[{script_name, script_store_dir, script_content}]`,
//! `atomic_tasks[{atomic_task_id, command, timeout_seconds}]`,
//! `atomic_tasks_relations`, `windows_interpreter`; plus our `login_env` and
//! `tag`. `atomicTaskNum` and `pwd` are accepted and ignored.

use std::collections::HashMap;

use gse_core::AgentRef;
use serde_json::Value;

use super::body::{
    Fields, bounded_array, entry_opt_str, entry_opt_u64, entry_str, optional_array, optional_bool,
    optional_str,
};
use super::error::{ApiError, quoted};
use crate::role::task::config::MAX_TIMEOUT_SECONDS;
use crate::role::task::spec::{
    self, AgentQuery, AtomicQuery, AtomicSpec, MAX_ATOMIC_TASKS, MAX_LABEL_BYTES, MAX_SCRIPT_BYTES,
    MAX_SCRIPTS, ResultQuery, ScriptFileSpec, ScriptTaskSpec, TargetName, TargetSpec,
};

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `async_execute_script`.
pub fn execute(body: &Fields, max_agents: usize) -> Result<ScriptTaskSpec, ApiError> {
    let agents = bounded_array(body, "agents", max_agents)?;
    if agents.is_empty() {
        return Err(invalid("agents", "is empty; name at least one agent"));
    }
    let atomic_tasks = atomic_tasks(body)?;
    relations(body, atomic_tasks.len())?;
    Ok(ScriptTaskSpec {
        targets: targets(agents)?,
        scripts: scripts(body)?,
        atomic_tasks,
        windows_interpreter: label(body, "windows_interpreter")?,
        login_env: optional_bool(body, "login_env")?.unwrap_or(false),
        tag: label(body, "tag")?,
    })
}

/// An optional short string field.
fn label(body: &Fields, name: &str) -> Result<String, ApiError> {
    let value = optional_str(body, name)?.unwrap_or_default();
    if value.len() > MAX_LABEL_BYTES {
        return Err(invalid(name, format!("is over {MAX_LABEL_BYTES} bytes")));
    }
    Ok(value.to_string())
}

/// `{bk_agent_id, bk_container_id?}` of an entry.
fn target_name(item: &Value, path: &str) -> Result<(TargetName, AgentRef), ApiError> {
    let raw = entry_str(item, path, "bk_agent_id")?;
    let agent = AgentRef::parse(raw).map_err(|source| ApiError::BadAgentId {
        field: format!("{path}.bk_agent_id"),
        source,
    })?;
    let container = entry_opt_str(item, path, "bk_container_id")?.unwrap_or_default();
    if container.len() > MAX_LABEL_BYTES {
        let problem = format!("is over {MAX_LABEL_BYTES} bytes");
        return Err(invalid(format!("{path}.bk_container_id"), problem));
    }
    let name = TargetName {
        bk_agent_id: raw.to_string(),
        bk_container_id: container.to_string(),
    };
    Ok((name, agent))
}

fn targets(agents: &[Value]) -> Result<Vec<TargetSpec>, ApiError> {
    let mut seen: HashMap<(String, String), usize> = HashMap::with_capacity(agents.len());
    let mut out = Vec::with_capacity(agents.len());
    for (i, item) in agents.iter().enumerate() {
        let path = format!("agents[{i}]");
        let (name, agent) = target_name(item, &path)?;
        let user = entry_opt_str(item, &path, "user")?.unwrap_or_default();
        if !user.is_empty() {
            spec::check_user(user)
                .map_err(|p| invalid(format!("{path}.user"), format!("{:?} {p}", quoted(user))))?;
        }
        let key = (name.bk_agent_id.clone(), name.bk_container_id.clone());
        if let Some(first) = seen.insert(key, i) {
            let problem = format!(
                "{:?} is listed twice (also agents[{first}])",
                quoted(&name.bk_agent_id)
            );
            return Err(invalid(format!("{path}.bk_agent_id"), problem));
        }
        out.push(TargetSpec {
            bk_agent_id: name.bk_agent_id,
            agent,
            bk_container_id: name.bk_container_id,
            user: user.to_string(),
        });
    }
    Ok(out)
}

fn scripts(body: &Fields) -> Result<Vec<ScriptFileSpec>, ApiError> {
    let items = optional_array(body, "scripts", MAX_SCRIPTS)?;
    let mut total = 0usize;
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("scripts[{i}]");
        let name = entry_str(item, &path, "script_name")?;
        spec::check_script_name(name).map_err(|p| {
            invalid(
                format!("{path}.script_name"),
                format!("{:?} {p}", quoted(name)),
            )
        })?;
        let dir = entry_str(item, &path, "script_store_dir")?;
        spec::check_store_dir(dir).map_err(|p| {
            invalid(
                format!("{path}.script_store_dir"),
                format!("{:?} {p}", quoted(dir)),
            )
        })?;
        let content = entry_opt_str(item, &path, "script_content")?.unwrap_or_default();
        total += content.len();
        if total > MAX_SCRIPT_BYTES {
            let problem = format!("scripts add up to over {MAX_SCRIPT_BYTES} bytes");
            return Err(invalid(format!("{path}.script_content"), problem));
        }
        if let Some(first) = seen.insert((dir, name), i) {
            let problem = format!(
                "{:?} is written twice (also scripts[{first}])",
                quoted(name)
            );
            return Err(invalid(format!("{path}.script_name"), problem));
        }
        out.push(ScriptFileSpec {
            name: name.to_string(),
            dir: dir.to_string(),
            content: content.to_string(),
        });
    }
    Ok(out)
}

fn atomic_tasks(body: &Fields) -> Result<Vec<AtomicSpec>, ApiError> {
    let items = bounded_array(body, "atomic_tasks", MAX_ATOMIC_TASKS)?;
    if items.is_empty() {
        return Err(invalid(
            "atomic_tasks",
            "is empty; give at least one command",
        ));
    }
    let n = items.len();
    let mut out: Vec<Option<AtomicSpec>> = vec![None; n];
    for (i, item) in items.iter().enumerate() {
        let path = format!("atomic_tasks[{i}]");
        let id = entry_opt_u64(item, &path, "atomic_task_id")?.ok_or_else(|| {
            ApiError::MissingField {
                field: format!("{path}.atomic_task_id"),
            }
        })?;
        let id_field = format!("{path}.atomic_task_id");
        let slot = usize::try_from(id).ok().filter(|&s| s < n).ok_or_else(|| {
            invalid(
                &id_field,
                format!(
                    "{id} is out of range: ids are 0..{} for {n} atomic tasks",
                    n - 1
                ),
            )
        })?;
        if out[slot].is_some() {
            return Err(invalid(id_field, format!("{id} is used twice")));
        }
        let command = entry_str(item, &path, "command")?;
        spec::check_command(command).map_err(|p| invalid(format!("{path}.command"), p))?;
        let timeout = entry_opt_u64(item, &path, "timeout_seconds")?.unwrap_or(0);
        if timeout > u64::from(MAX_TIMEOUT_SECONDS) {
            let problem = format!("{timeout} is over {MAX_TIMEOUT_SECONDS} (one day)");
            return Err(invalid(format!("{path}.timeout_seconds"), problem));
        }
        out[slot] = Some(AtomicSpec {
            id: id as u32,
            command: command.to_string(),
            timeout_seconds: timeout as u32,
        });
    }
    // n ids, all distinct and below n: every slot is filled.
    Ok(out.into_iter().flatten().collect())
}

/// `atomic_tasks_relations`: atomic tasks always run serially in id order,
/// so relations only have to be consistent with that.
fn relations(body: &Fields, n: usize) -> Result<(), ApiError> {
    let items = optional_array(body, "atomic_tasks_relations", MAX_ATOMIC_TASKS)?;
    for (i, item) in items.iter().enumerate() {
        let path = format!("atomic_tasks_relations[{i}]");
        let id = entry_opt_u64(item, &path, "atomic_task_id")?.unwrap_or(0);
        if id >= n as u64 {
            return Err(invalid(
                format!("{path}.atomic_task_id"),
                format!("{id} is not an atomic task id"),
            ));
        }
        let Some(deps) = item.get("atomic_task_id_idx").filter(|v| !v.is_null()) else {
            continue;
        };
        let deps = deps.as_array().ok_or_else(|| ApiError::WrongType {
            field: format!("{path}.atomic_task_id_idx"),
            expected: "an array",
            got: super::error::json_type(deps),
        })?;
        if deps.iter().any(|d| d.as_u64().is_none_or(|d| d >= id)) {
            let problem =
                format!("atomic task {id} may only wait for lower ids (they run serially)");
            return Err(invalid(format!("{path}.atomic_task_id_idx"), problem));
        }
    }
    Ok(())
}

/// The required `task_id` of polls and terminates.
pub fn task_id(body: &Fields) -> Result<String, ApiError> {
    let id = optional_str(body, "task_id")?.ok_or_else(|| ApiError::MissingField {
        field: "task_id".into(),
    })?;
    if id.is_empty() || id.len() > MAX_LABEL_BYTES {
        return Err(invalid(
            "task_id",
            format!("{:?} is not a task id", quoted(id)),
        ));
    }
    Ok(id.to_string())
}

/// `get_execute_script_result`.
pub fn result_query(body: &Fields, max_agents: usize) -> Result<ResultQuery, ApiError> {
    let Some(_) = body.get("agent_tasks").filter(|v| !v.is_null()) else {
        return Ok(ResultQuery::default());
    };
    let items = bounded_array(body, "agent_tasks", max_agents)?;
    let mut agents = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("agent_tasks[{i}]");
        let (target, _) = target_name(item, &path)?;
        agents.push(AgentQuery {
            target,
            atomic_tasks: atomic_queries(item, &path)?,
        });
    }
    Ok(ResultQuery {
        agents: Some(agents),
    })
}

fn atomic_queries(item: &Value, path: &str) -> Result<Vec<AtomicQuery>, ApiError> {
    let list = match item.get("atomic_tasks") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(ApiError::WrongType {
                field: format!("{path}.atomic_tasks"),
                expected: "an array",
                got: super::error::json_type(other),
            });
        }
    };
    if list.len() > MAX_ATOMIC_TASKS {
        let problem = format!(
            "has {} entries; a task has at most {MAX_ATOMIC_TASKS}",
            list.len()
        );
        return Err(invalid(format!("{path}.atomic_tasks"), problem));
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, a) in list.iter().enumerate() {
        let apath = format!("{path}.atomic_tasks[{j}]");
        let id = entry_opt_u64(a, &apath, "atomic_task_id")?.unwrap_or(0);
        out.push(AtomicQuery {
            atomic_id: u32::try_from(id).unwrap_or(u32::MAX),
            offset: entry_opt_u64(a, &apath, "offset")?.unwrap_or(0),
            limit: entry_opt_u64(a, &apath, "limit")?,
        });
    }
    Ok(out)
}

/// `async_terminate_execute_script`: `None` = every target.
pub fn terminate_targets(
    body: &Fields,
    max_agents: usize,
) -> Result<Option<Vec<TargetName>>, ApiError> {
    let items = optional_array(body, "agents", max_agents)?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(target_name(item, &format!("agents[{i}]"))?.0);
    }
    Ok(Some(out))
}

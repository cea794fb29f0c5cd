//! The script-task requests (COMPAT.md §2.1) as typed structs, and the
//! checks that turn them into the task role's types, naming the field that
//! breaks a bound.
//!
//! Shapes are bk-job's: `agents[{bk_agent_id, bk_container_id?, user?, pwd?}]`,
//! `scripts[{script_name, script_store_dir, script_content}]`,
//! `atomic_tasks[{atomic_task_id, command, timeout_seconds}]`,
//! `atomic_tasks_relations`, `windows_interpreter`; plus our `login_env` and
//! `tag`. `atomicTaskNum` and `pwd` are accepted and ignored. Unknown
//! fields are ignored; null counts as absent.

use std::collections::HashMap;

use gse_core::AgentRef;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, quoted};
use crate::role::task::config::MAX_TIMEOUT_SECONDS;
use crate::role::task::spec::{
    self, AgentQuery, AtomicQuery, AtomicSpec, MAX_ATOMIC_TASKS, MAX_LABEL_BYTES, MAX_SCRIPT_BYTES,
    MAX_SCRIPTS, ResultQuery, ScriptFileSpec, ScriptTaskSpec, TargetName, TargetSpec,
};

/// `async_execute_script` (bk-job's `ExecuteScriptRequest`): run the
/// atomic tasks, serially in id order, on every agent, after writing the
/// scripts there. bk-job's `atomicTaskNum` is accepted and ignored.
#[derive(Deserialize, ToSchema)]
pub struct ExecuteScriptRequest {
    /// Every target, each at most once (by `bk_agent_id` and
    /// `bk_container_id`); at most `api.max_hosts_per_call` of them (413
    /// beyond).
    #[schema(min_items = 1)]
    agents: Vec<ScriptAgent>,
    /// Files to write on every target before running: at most 100, of at
    /// most 16 MiB of content together, each (directory, name) once.
    scripts: Option<Vec<ScriptFile>>,
    /// The commands, with ids exactly 0..n-1 in any order.
    #[schema(min_items = 1, max_items = 100)]
    atomic_tasks: Vec<ScriptAtomicTask>,
    /// Which atomic tasks wait for which. They always run serially in id
    /// order, so a task may only wait for lower ids. At most 100.
    atomic_tasks_relations: Option<Vec<ScriptAtomicRelation>>,
    /// Interpreter to prefer on Windows; at most 256 bytes.
    windows_interpreter: Option<String>,
    /// Run with the user's login environment (default false).
    login_env: Option<bool>,
    /// A label copied into every result entry; at most 256 bytes.
    tag: Option<String>,
}

/// One target of `async_execute_script` (bk-job's `Agent`). Its `pwd` is
/// accepted and ignored.
#[derive(Deserialize, ToSchema)]
struct ScriptAgent {
    /// The agent's id, or the legacy `cloud:ip` form.
    bk_agent_id: String,
    /// A container on that host; absent or empty for the host itself. At
    /// most 256 bytes.
    bk_container_id: Option<String>,
    /// Account to run as (`^[a-z_][a-z0-9_.-]{0,31}$`); absent or empty
    /// for the agent's own user.
    user: Option<String>,
}

/// A script file to write on the targets before running (bk-job's
/// `GseScript`).
#[derive(Deserialize, ToSchema)]
struct ScriptFile {
    /// A plain file name: no `/`, `\` or NUL; at most 255 bytes.
    script_name: String,
    /// An absolute directory (`/dir`, or `C:\dir` on Windows) without `..`.
    script_store_dir: String,
    /// The file's text (plain, not base64); absent means an empty file.
    script_content: Option<String>,
}

/// One command of a script task (bk-job's `AtomicScriptTask`).
#[derive(Deserialize, ToSchema)]
struct ScriptAtomicTask {
    /// 0..n-1 for n atomic tasks, each id once.
    #[schema(value_type = u64, required = true)]
    atomic_task_id: Option<u64>,
    /// The command line, not empty, at most 65536 bytes.
    command: String,
    /// At most 86400 (one day); absent or 0 = the configured default.
    timeout_seconds: Option<u64>,
}

/// `atomic_tasks_relations` entry (bk-job's `AtomicScriptTaskRelation`).
#[derive(Deserialize, ToSchema)]
struct ScriptAtomicRelation {
    /// The atomic task that waits (absent = 0).
    atomic_task_id: Option<u64>,
    /// The ids it waits for: all lower than `atomic_task_id`.
    atomic_task_id_idx: Option<Vec<u64>>,
}

/// `get_execute_script_result` (bk-job's `GetExecuteScriptResultRequest`):
/// the results and log windows of a script task.
#[derive(Deserialize, ToSchema)]
pub struct GetScriptResultRequest {
    /// The id `async_execute_script` answered.
    task_id: String,
    /// The agents to report, in this order; absent or null = every entry
    /// of the task from offset 0. At most `api.max_hosts_per_call` (413
    /// beyond). Agents or atomic tasks not in the task are left out.
    agent_tasks: Option<Vec<ScriptAgentTasks>>,
}

/// One agent of a poll.
#[derive(Deserialize, ToSchema)]
struct ScriptAgentTasks {
    /// The agent as named in `async_execute_script`.
    bk_agent_id: String,
    /// Its container, if it was named with one.
    bk_container_id: Option<String>,
    /// The atomic tasks to report (at most 100); absent or empty = every
    /// atomic task from offset 0.
    atomic_tasks: Option<Vec<ScriptAtomicWindow>>,
}

/// One atomic task's log window in a poll.
#[derive(Deserialize, ToSchema)]
struct ScriptAtomicWindow {
    /// The atomic task (absent = 0).
    atomic_task_id: Option<u64>,
    /// Byte offset into the UTF-8 log (absent = 0).
    offset: Option<u64>,
    /// Most bytes of log wanted (absent = 5 MiB).
    limit: Option<u64>,
}

/// `async_terminate_execute_script`: stop a script task on some agents or
/// all.
#[derive(Deserialize, ToSchema)]
pub struct TerminateScriptRequest {
    /// The id `async_execute_script` answered.
    task_id: String,
    /// The agents to stop it on; absent, null or empty = every target. At
    /// most `api.max_hosts_per_call` (413 beyond).
    agents: Option<Vec<ScriptAgentName>>,
}

/// An agent named in a terminate.
#[derive(Deserialize, ToSchema)]
struct ScriptAgentName {
    /// The agent as named in `async_execute_script`.
    bk_agent_id: String,
    /// Its container, if it was named with one.
    bk_container_id: Option<String>,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// 413 when a list has more than `limit` entries.
fn bounded<T>(items: &[T], field: &'static str, limit: usize) -> Result<(), ApiError> {
    if items.len() > limit {
        return Err(ApiError::TooManyEntries {
            field,
            count: items.len(),
            limit,
        });
    }
    Ok(())
}

/// `async_execute_script`: the task spec, every bound checked.
pub fn execute(req: ExecuteScriptRequest, max_agents: usize) -> Result<ScriptTaskSpec, ApiError> {
    bounded(&req.agents, "agents", max_agents)?;
    if req.agents.is_empty() {
        return Err(invalid("agents", "is empty; name at least one agent"));
    }
    let atomic_tasks = atomic_tasks(req.atomic_tasks)?;
    relations(
        req.atomic_tasks_relations.as_deref().unwrap_or_default(),
        atomic_tasks.len(),
    )?;
    Ok(ScriptTaskSpec {
        targets: targets(req.agents)?,
        scripts: scripts(req.scripts.unwrap_or_default())?,
        atomic_tasks,
        windows_interpreter: label(req.windows_interpreter, "windows_interpreter")?,
        login_env: req.login_env.unwrap_or(false),
        tag: label(req.tag, "tag")?,
    })
}

/// An optional short string field.
fn label(value: Option<String>, name: &str) -> Result<String, ApiError> {
    let value = value.unwrap_or_default();
    if value.len() > MAX_LABEL_BYTES {
        return Err(invalid(name, format!("is over {MAX_LABEL_BYTES} bytes")));
    }
    Ok(value)
}

/// `{bk_agent_id, bk_container_id?}` of the entry at `path`.
fn target_name(
    bk_agent_id: String,
    bk_container_id: Option<String>,
    path: &str,
) -> Result<(TargetName, AgentRef), ApiError> {
    let agent = AgentRef::parse(&bk_agent_id).map_err(|source| ApiError::BadAgentId {
        field: format!("{path}.bk_agent_id"),
        source,
    })?;
    let container = bk_container_id.unwrap_or_default();
    if container.len() > MAX_LABEL_BYTES {
        let problem = format!("is over {MAX_LABEL_BYTES} bytes");
        return Err(invalid(format!("{path}.bk_container_id"), problem));
    }
    let name = TargetName {
        bk_agent_id,
        bk_container_id: container,
    };
    Ok((name, agent))
}

fn targets(agents: Vec<ScriptAgent>) -> Result<Vec<TargetSpec>, ApiError> {
    let mut seen: HashMap<(String, String), usize> = HashMap::with_capacity(agents.len());
    let mut out = Vec::with_capacity(agents.len());
    for (i, item) in agents.into_iter().enumerate() {
        let path = format!("agents[{i}]");
        let (name, agent) = target_name(item.bk_agent_id, item.bk_container_id, &path)?;
        let user = item.user.unwrap_or_default();
        if !user.is_empty() {
            spec::check_user(&user)
                .map_err(|p| invalid(format!("{path}.user"), format!("{:?} {p}", quoted(&user))))?;
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
            user,
        });
    }
    Ok(out)
}

fn scripts(items: Vec<ScriptFile>) -> Result<Vec<ScriptFileSpec>, ApiError> {
    bounded(&items, "scripts", MAX_SCRIPTS)?;
    let mut total = 0usize;
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("scripts[{i}]");
        let name = item.script_name.as_str();
        spec::check_script_name(name).map_err(|p| {
            invalid(
                format!("{path}.script_name"),
                format!("{:?} {p}", quoted(name)),
            )
        })?;
        let dir = item.script_store_dir.as_str();
        spec::check_store_dir(dir).map_err(|p| {
            invalid(
                format!("{path}.script_store_dir"),
                format!("{:?} {p}", quoted(dir)),
            )
        })?;
        total += item.script_content.as_deref().map_or(0, str::len);
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
    }
    // Checked: the files move into the spec as they are.
    Ok(items
        .into_iter()
        .map(|item| ScriptFileSpec {
            name: item.script_name,
            dir: item.script_store_dir,
            content: item.script_content.unwrap_or_default(),
        })
        .collect())
}

fn atomic_tasks(items: Vec<ScriptAtomicTask>) -> Result<Vec<AtomicSpec>, ApiError> {
    bounded(&items, "atomic_tasks", MAX_ATOMIC_TASKS)?;
    if items.is_empty() {
        return Err(invalid(
            "atomic_tasks",
            "is empty; give at least one command",
        ));
    }
    let n = items.len();
    let mut out: Vec<Option<AtomicSpec>> = vec![None; n];
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("atomic_tasks[{i}]");
        let id_field = format!("{path}.atomic_task_id");
        let Some(id) = item.atomic_task_id else {
            return Err(ApiError::MissingField { field: id_field });
        };
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
        spec::check_command(&item.command).map_err(|p| invalid(format!("{path}.command"), p))?;
        let timeout = item.timeout_seconds.unwrap_or(0);
        if timeout > u64::from(MAX_TIMEOUT_SECONDS) {
            let problem = format!("{timeout} is over {MAX_TIMEOUT_SECONDS} (one day)");
            return Err(invalid(format!("{path}.timeout_seconds"), problem));
        }
        out[slot] = Some(AtomicSpec {
            id: id as u32,
            command: item.command,
            timeout_seconds: timeout as u32,
        });
    }
    // n ids, all distinct and below n: every slot is filled.
    Ok(out.into_iter().flatten().collect())
}

/// `atomic_tasks_relations`: atomic tasks always run serially in id order,
/// so relations only have to be consistent with that.
fn relations(items: &[ScriptAtomicRelation], n: usize) -> Result<(), ApiError> {
    bounded(items, "atomic_tasks_relations", MAX_ATOMIC_TASKS)?;
    for (i, item) in items.iter().enumerate() {
        let path = format!("atomic_tasks_relations[{i}]");
        let id = item.atomic_task_id.unwrap_or(0);
        if id >= n as u64 {
            return Err(invalid(
                format!("{path}.atomic_task_id"),
                format!("{id} is not an atomic task id"),
            ));
        }
        let deps = item.atomic_task_id_idx.as_deref().unwrap_or_default();
        if deps.iter().any(|&d| d >= id) {
            let problem =
                format!("atomic task {id} may only wait for lower ids (they run serially)");
            return Err(invalid(format!("{path}.atomic_task_id_idx"), problem));
        }
    }
    Ok(())
}

/// A task id as polls and terminates name it: 1..=256 bytes.
pub(super) fn check_task_id(id: String) -> Result<String, ApiError> {
    if id.is_empty() || id.len() > MAX_LABEL_BYTES {
        return Err(invalid(
            "task_id",
            format!("{:?} is not a task id", quoted(&id)),
        ));
    }
    Ok(id)
}

/// `get_execute_script_result`: the task id and what to report of it.
pub fn result_query(
    req: GetScriptResultRequest,
    max_agents: usize,
) -> Result<(String, ResultQuery), ApiError> {
    let task_id = check_task_id(req.task_id)?;
    let Some(items) = req.agent_tasks else {
        return Ok((task_id, ResultQuery::default()));
    };
    bounded(&items, "agent_tasks", max_agents)?;
    let mut agents = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("agent_tasks[{i}]");
        let (target, _) = target_name(item.bk_agent_id, item.bk_container_id, &path)?;
        agents.push(AgentQuery {
            target,
            atomic_tasks: atomic_queries(item.atomic_tasks.unwrap_or_default(), &path)?,
        });
    }
    let query = ResultQuery {
        agents: Some(agents),
    };
    Ok((task_id, query))
}

fn atomic_queries(list: Vec<ScriptAtomicWindow>, path: &str) -> Result<Vec<AtomicQuery>, ApiError> {
    if list.len() > MAX_ATOMIC_TASKS {
        let problem = format!(
            "has {} entries; a task has at most {MAX_ATOMIC_TASKS}",
            list.len()
        );
        return Err(invalid(format!("{path}.atomic_tasks"), problem));
    }
    Ok(list
        .into_iter()
        .map(|a| AtomicQuery {
            atomic_id: u32::try_from(a.atomic_task_id.unwrap_or(0)).unwrap_or(u32::MAX),
            offset: a.offset.unwrap_or(0),
            limit: a.limit,
        })
        .collect())
}

/// `async_terminate_execute_script`: the task id and the targets to stop
/// (`None` = every target).
pub fn terminate(
    req: TerminateScriptRequest,
    max_agents: usize,
) -> Result<(String, Option<Vec<TargetName>>), ApiError> {
    let task_id = check_task_id(req.task_id)?;
    let items = req.agents.unwrap_or_default();
    bounded(&items, "agents", max_agents)?;
    if items.is_empty() {
        return Ok((task_id, None));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("agents[{i}]");
        out.push(target_name(item.bk_agent_id, item.bk_container_id, &path)?.0);
    }
    Ok((task_id, Some(out)))
}

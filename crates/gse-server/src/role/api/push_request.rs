//! Reading bk-cmdb's content push (COMPAT §2.2b): `async_push_file` and
//! its poll `async/get_transfer_file_result`, into typed requests
//! ([`super::body::typed`]: unknown fields ignored, errors naming the field
//! path), then checked as a transfer's fields are.

use gse_core::AgentRef;
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::{Fields, typed};
use super::error::{ApiError, quoted};
use crate::role::file::spec::{
    self, AgentName, AgentSpec, DEFAULT_PUSH_MODE, FileKind, FileTaskSpec, SourceFrom, SourceSpec,
    TargetDirSpec, TransferSpec,
};
use crate::role::task::spec::check_store_dir;

/// Largest `file_content`: pushes are small text files (host identities,
/// configs); bigger files go through `async_transfer_file`.
pub const MAX_PUSH_BYTES: usize = 1 << 20;

/// `async_push_file`: small files given by their content (bk-cmdb's
/// host identity), written by the named agents.
#[derive(Deserialize, ToSchema)]
pub struct PushFile {
    /// Seconds the push may take; 0 or absent = the configured default.
    #[serde(default)]
    timeout_seconds: u64,
    /// Create missing target directories.
    #[serde(default)]
    auto_mkdir: bool,
    /// One entry per file: at least one. All tasks together name at most
    /// `api.max_hosts_per_call` agents.
    tasks: Vec<PushTask>,
}

/// One file to write, and the agents that write it.
#[derive(Deserialize, ToSchema)]
pub struct PushTask {
    /// The file's name (no directory part).
    file_name: String,
    /// The absolute directory the file goes to.
    store_dir: String,
    /// The file's text itself (at most 1 MiB).
    file_content: String,
    /// `user` or `user:group` owning the file; empty or absent = the
    /// agent's own user.
    #[serde(default)]
    owner: String,
    /// The file's mode bits, as chmod(2) takes them (bk-cmdb sends Go's
    /// `0644`, i.e. 420); at most 4095 (07777); 0 or absent = 0644.
    #[serde(default)]
    #[schema(maximum = 4095)]
    right: u32,
    /// The agents that write the file: at least one agent id.
    agent_id_list: Vec<String>,
}

/// `async/get_transfer_file_result`.
#[derive(Deserialize, ToSchema)]
pub struct PushResultQuery {
    /// The task id `async_push_file` answered.
    task_id: String,
    /// The agents asked about (at most `api.max_hosts_per_call`); absent
    /// or empty = all of them.
    #[serde(default)]
    agent_id_list: Vec<String>,
}

/// `async_push_file` as a transfer whose source is this node.
pub fn push(body: &Fields, max_hosts: usize) -> Result<TransferSpec, ApiError> {
    let req: PushFile = typed(body)?;
    if req.tasks.is_empty() {
        return Err(invalid("tasks", "empty: give at least one file"));
    }
    let mut hosts = 0usize;
    let mut tasks = Vec::with_capacity(req.tasks.len());
    for (i, t) in req.tasks.into_iter().enumerate() {
        let at = |name: &str| format!("tasks[{i}].{name}");
        spec::check_plain_name(&t.file_name)
            .map_err(|p| invalid(at("file_name"), format!("{:?} {p}", quoted(&t.file_name))))?;
        check_store_dir(&t.store_dir)
            .map_err(|p| invalid(at("store_dir"), format!("{:?} {p}", quoted(&t.store_dir))))?;
        if !t.owner.is_empty() {
            spec::check_owner(&t.owner)
                .map_err(|p| invalid(at("owner"), format!("{:?} {p}", quoted(&t.owner))))?;
        }
        if t.right > 0o7777 {
            return Err(invalid(
                at("right"),
                format!("{} is not a file mode (at most 4095, 07777)", t.right),
            ));
        }
        if t.file_content.len() > MAX_PUSH_BYTES {
            return Err(ApiError::OverLimit {
                field: at("file_content"),
                what: "bytes",
                count: t.file_content.len(),
                limit: MAX_PUSH_BYTES,
                key: "the content push limit; send bigger files with async_transfer_file",
            });
        }
        if t.agent_id_list.is_empty() {
            return Err(invalid(
                at("agent_id_list"),
                "empty: name at least one agent",
            ));
        }
        hosts += t.agent_id_list.len();
        if hosts > max_hosts {
            return Err(ApiError::TooManyEntries {
                field: "tasks[].agent_id_list",
                count: hosts,
                limit: max_hosts,
            });
        }
        let targets = t
            .agent_id_list
            .iter()
            .enumerate()
            .map(|(j, id)| target(id, &format!("tasks[{i}].agent_id_list[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        tasks.push(FileTaskSpec {
            source: SourceSpec {
                from: SourceFrom::Content(t.file_content.into_bytes().into()),
                store_dir: String::new(),
                file_name: t.file_name,
                kind: FileKind::File,
            },
            target: TargetDirSpec {
                store_dir: t.store_dir,
                file_name: String::new(),
                owner: t.owner,
                permission: match t.right {
                    0 => DEFAULT_PUSH_MODE,
                    mode => mode,
                },
            },
            targets,
        });
    }
    Ok(TransferSpec {
        tasks,
        timeout_seconds: req.timeout_seconds,
        auto_mkdir: req.auto_mkdir,
        ..TransferSpec::default()
    })
}

/// `async/get_transfer_file_result`: the task, and the agents asked about
/// (`None`: all).
pub fn result_query(
    body: &Fields,
    max_hosts: usize,
) -> Result<(String, Option<Vec<AgentName>>), ApiError> {
    let q: PushResultQuery = typed(body)?;
    if q.task_id.is_empty() {
        return Err(ApiError::MissingField {
            field: "task_id".into(),
        });
    }
    if q.agent_id_list.len() > max_hosts {
        return Err(ApiError::TooManyEntries {
            field: "agent_id_list",
            count: q.agent_id_list.len(),
            limit: max_hosts,
        });
    }
    let agents: Vec<AgentName> = q
        .agent_id_list
        .into_iter()
        .map(|bk_agent_id| AgentName {
            bk_agent_id,
            bk_container_id: String::new(),
        })
        .collect();
    Ok((q.task_id, (!agents.is_empty()).then_some(agents)))
}

fn target(id: &str, field: &str) -> Result<AgentSpec, ApiError> {
    let agent = AgentRef::parse(id).map_err(|source| ApiError::BadAgentId {
        field: field.to_string(),
        source,
    })?;
    Ok(AgentSpec {
        bk_agent_id: id.to_string(),
        agent,
        bk_container_id: String::new(),
        user: String::new(),
    })
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

//! Reading the file-transfer requests (COMPAT.md §2.1) into the file role's
//! types, checking every bound, and naming the field that breaks one.
//!
//! Shapes are bk-job's: `tasks[{source:{file_name, store_dir, agent},
//! target:{file_name, store_dir, owner?, permission?, agents}}]`,
//! `timeout_seconds`, `auto_mkdir`, `upload_speed`, `download_speed`; plus
//! our `tasks[].source.file_type`, `zone_chain` and `pass_through`
//! (docs/API.md). Agents are `{bk_agent_id, bk_container_id?, user?, pwd?}`;
//! `pwd` is accepted and ignored.

use std::collections::{HashMap, HashSet};

use gse_core::AgentRef;
use serde_json::Value;

use super::body::{Fields, not_an_integer};
use super::error::{ApiError, json_type, quoted};
use crate::role::file::FileConfig;
use crate::role::file::spec::{
    self, AgentName, AgentSpec, FileKind, FileTaskSpec, MAX_ENTRIES, MAX_HOPS, MAX_PASS_THROUGH,
    MAX_RELAYS_PER_HOP, MAX_SPEED_MB, SourceFrom, SourceSpec, TargetDirSpec, TransferSpec, ZoneHop,
    ZonePair,
};
use crate::role::task::spec::{MAX_LABEL_BYTES, check_store_dir, check_user};

/// The bounds a transfer request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `api.max_hosts_per_call`: distinct agents per transfer, and targets
    /// per task.
    pub max_hosts: usize,
    /// `file.max_tasks_per_transfer`.
    pub max_tasks: usize,
    /// `file.max_timeout`, seconds.
    pub max_timeout_s: u64,
}

impl Limits {
    pub fn new(max_hosts: usize, config: &FileConfig) -> Self {
        Limits {
            max_hosts,
            max_tasks: config.max_tasks_per_transfer,
            max_timeout_s: config.max_timeout.as_secs(),
        }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

// === field readers (on an object, naming `path.name`) ===

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Fields, ApiError> {
    v.as_object().ok_or_else(|| ApiError::WrongType {
        field: path.to_string(),
        expected: "an object",
        got: json_type(v),
    })
}

/// A field that is absent or null is `None`.
fn get<'a>(o: &'a Fields, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn required_object<'a>(o: &'a Fields, path: &str, name: &str) -> Result<&'a Fields, ApiError> {
    let v = get(o, name).ok_or_else(|| ApiError::MissingField {
        field: join(path, name),
    })?;
    as_object(v, &join(path, name))
}

fn opt_str<'a>(o: &'a Fields, path: &str, name: &str) -> Result<Option<&'a str>, ApiError> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::WrongType {
            field: join(path, name),
            expected: "a string",
            got: json_type(other),
        }),
    }
}

fn req_str<'a>(o: &'a Fields, path: &str, name: &str) -> Result<&'a str, ApiError> {
    opt_str(o, path, name)?.ok_or_else(|| ApiError::MissingField {
        field: join(path, name),
    })
}

fn opt_bool(o: &Fields, path: &str, name: &str) -> Result<Option<bool>, ApiError> {
    match get(o, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::WrongType {
            field: join(path, name),
            expected: "a boolean",
            got: json_type(other),
        }),
    }
}

/// An integer; a number in a string is refused (bk-job sends ints).
fn opt_int(o: &Fields, path: &str, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = get(o, name) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Number(n) => n.as_i64(),
        other => return Err(not_an_integer(join(path, name), other)),
    };
    parsed.map(Some).ok_or_else(|| {
        invalid(
            join(path, name),
            format!("{} is not an integer", quoted(&v.to_string())),
        )
    })
}

fn opt_u64(o: &Fields, path: &str, name: &str) -> Result<Option<u64>, ApiError> {
    match opt_int(o, path, name)? {
        None => Ok(None),
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| invalid(join(path, name), format!("{n} is not an integer >= 0"))),
    }
}

/// An array field; absent or null is empty unless `required`. Its length
/// is checked against `max` before any entry is read.
fn array<'a>(
    o: &'a Fields,
    path: &str,
    name: &str,
    required: bool,
    max: Max,
) -> Result<&'a [Value], ApiError> {
    let field = join(path, name);
    let items = match get(o, name) {
        None if required => return Err(ApiError::MissingField { field }),
        None => return Ok(&[]),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::WrongType {
                field,
                expected: "an array",
                got: json_type(other),
            });
        }
    };
    match max {
        Max::Config(limit, key) if items.len() > limit => Err(ApiError::OverLimit {
            field,
            what: "entries",
            count: items.len(),
            limit,
            key,
        }),
        Max::Fixed(limit) if items.len() > limit => Err(invalid(
            field,
            format!("has {} entries; at most {limit} are allowed", items.len()),
        )),
        _ => Ok(items),
    }
}

/// The most entries an array may have.
#[derive(Clone, Copy)]
enum Max {
    /// A limit the operator sets, by its config key.
    Config(usize, &'static str),
    /// A limit of gse's own.
    Fixed(usize),
}

// === async_transfer_file ===

/// `async_transfer_file`.
pub fn transfer(body: &Fields, limits: &Limits) -> Result<TransferSpec, ApiError> {
    let items = array(
        body,
        "",
        "tasks",
        true,
        Max::Config(limits.max_tasks, "file.max_tasks_per_transfer"),
    )?;
    if items.is_empty() {
        return Err(invalid("tasks", "is empty; give at least one source file"));
    }
    let mut tasks = Vec::with_capacity(items.len());
    let mut entries = 0usize;
    for (i, item) in items.iter().enumerate() {
        let path = format!("tasks[{i}]");
        let task = file_task(as_object(item, &path)?, &path, limits)?;
        entries += 1 + task.targets.len();
        if entries > MAX_ENTRIES {
            let problem = format!(
                "the transfer has over {MAX_ENTRIES} entries (one per task plus one per target of each task); split it"
            );
            return Err(invalid(format!("{path}.target.agents"), problem));
        }
        tasks.push(task);
    }
    let spec = TransferSpec {
        tasks,
        timeout_seconds: timeout(body, limits)?,
        auto_mkdir: opt_bool(body, "", "auto_mkdir")?.unwrap_or(false),
        upload_speed: speed(body, "upload_speed")?,
        download_speed: speed(body, "download_speed")?,
        zone_chain: zone_chain(body)?,
        pass_through: pass_through(body)?,
    };
    check_distinct_agents(&spec, limits.max_hosts)?;
    Ok(spec)
}

fn timeout(body: &Fields, limits: &Limits) -> Result<u64, ApiError> {
    let t = opt_u64(body, "", "timeout_seconds")?.unwrap_or(0);
    if t > limits.max_timeout_s {
        let problem = format!(
            "{t} is over the limit of {} seconds (config file.max_timeout)",
            limits.max_timeout_s
        );
        return Err(invalid("timeout_seconds", problem));
    }
    Ok(t)
}

/// A speed cap in MB/s; 0 or negative = unlimited.
fn speed(body: &Fields, name: &str) -> Result<u64, ApiError> {
    let n = opt_int(body, "", name)?.unwrap_or(0).max(0) as u64;
    if n > MAX_SPEED_MB {
        let problem = format!("{n} MB/s is over {MAX_SPEED_MB}; send 0 for no limit");
        return Err(invalid(name, problem));
    }
    Ok(n)
}

fn file_task(o: &Fields, path: &str, limits: &Limits) -> Result<FileTaskSpec, ApiError> {
    let source = source(required_object(o, path, "source")?, &join(path, "source"))?;
    let tpath = join(path, "target");
    let t = required_object(o, path, "target")?;
    let target = target_dir(t, &tpath)?;
    let agents = array(
        t,
        &tpath,
        "agents",
        true,
        Max::Config(limits.max_hosts, "api.max_hosts_per_call"),
    )?;
    if agents.is_empty() {
        return Err(invalid(
            join(&tpath, "agents"),
            "is empty; name at least one target agent",
        ));
    }
    let mut seen: HashMap<(String, String), usize> = HashMap::with_capacity(agents.len());
    let mut targets = Vec::with_capacity(agents.len());
    for (j, item) in agents.iter().enumerate() {
        let apath = format!("{tpath}.agents[{j}]");
        let a = agent(item, &apath)?;
        let key = (a.bk_agent_id.clone(), a.bk_container_id.clone());
        if let Some(first) = seen.insert(key, j) {
            let problem = format!(
                "{:?} is listed twice (also agents[{first}])",
                quoted(&a.bk_agent_id)
            );
            return Err(invalid(format!("{apath}.bk_agent_id"), problem));
        }
        targets.push(a);
    }
    Ok(FileTaskSpec {
        source,
        target,
        targets,
    })
}

fn source(o: &Fields, path: &str) -> Result<SourceSpec, ApiError> {
    let agent = agent(
        get(o, "agent").ok_or_else(|| ApiError::MissingField {
            field: join(path, "agent"),
        })?,
        &join(path, "agent"),
    )?;
    let store_dir = store_dir(o, path)?;
    let file_name = opt_str(o, path, "file_name")?.unwrap_or_default();
    let kind = match opt_u64(o, path, "file_type")? {
        None => FileKind::infer(file_name),
        Some(n) => FileKind::from_job(n).ok_or_else(|| {
            invalid(
                join(path, "file_type"),
                format!(
                    "{n} is not a file type: use 1 (file), 2 (directory), 3 (regex) or 4 (wildcard)"
                ),
            )
        })?,
    };
    let name_field = join(path, "file_name");
    let named = |p: &str| format!("{:?} {p}", quoted(file_name));
    match kind {
        FileKind::File if file_name.is_empty() => {
            return Err(invalid(
                name_field,
                "is empty; a file task (file_type 1) names the file",
            ));
        }
        FileKind::File => {
            spec::check_plain_name(file_name).map_err(|p| invalid(&name_field, named(p)))?
        }
        FileKind::Dir if file_name.is_empty() => {}
        FileKind::Dir => {
            spec::check_plain_name(file_name).map_err(|p| invalid(&name_field, named(p)))?
        }
        FileKind::Regex | FileKind::Wildcard => {
            spec::check_pattern(file_name).map_err(|p| invalid(&name_field, p))?
        }
    }
    Ok(SourceSpec {
        from: SourceFrom::Agent(agent),
        store_dir: store_dir.to_string(),
        file_name: file_name.to_string(),
        kind,
    })
}

fn store_dir<'a>(o: &'a Fields, path: &str) -> Result<&'a str, ApiError> {
    let dir = req_str(o, path, "store_dir")?;
    check_store_dir(dir)
        .map_err(|p| invalid(join(path, "store_dir"), format!("{:?} {p}", quoted(dir))))?;
    Ok(dir)
}

fn target_dir(o: &Fields, path: &str) -> Result<TargetDirSpec, ApiError> {
    let store_dir = store_dir(o, path)?;
    let file_name = opt_str(o, path, "file_name")?.unwrap_or_default();
    if !file_name.is_empty() {
        spec::check_plain_name(file_name).map_err(|p| {
            invalid(
                join(path, "file_name"),
                format!("{:?} {p}", quoted(file_name)),
            )
        })?;
    }
    let owner = opt_str(o, path, "owner")?.unwrap_or_default();
    if !owner.is_empty() {
        spec::check_owner(owner)
            .map_err(|p| invalid(join(path, "owner"), format!("{:?} {p}", quoted(owner))))?;
    }
    Ok(TargetDirSpec {
        store_dir: store_dir.to_string(),
        file_name: file_name.to_string(),
        owner: owner.to_string(),
        permission: permission(o, path)?,
    })
}

/// `permission`: chmod digits, as a number (755) or a string ("0644").
fn permission(o: &Fields, path: &str) -> Result<u32, ApiError> {
    let field = join(path, "permission");
    let digits = match get(o, "permission") {
        None => return Ok(0),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if s.is_empty() => return Ok(0),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::WrongType {
                field,
                expected: "octal digits as a number or a string",
                got: json_type(other),
            });
        }
    };
    spec::parse_permission(&digits).map_err(|p| invalid(field, p))
}

fn agent(v: &Value, path: &str) -> Result<AgentSpec, ApiError> {
    let o = as_object(v, path)?;
    let raw = req_str(o, path, "bk_agent_id")?;
    let parsed = AgentRef::parse(raw).map_err(|source| ApiError::BadAgentId {
        field: join(path, "bk_agent_id"),
        source,
    })?;
    let container = opt_str(o, path, "bk_container_id")?.unwrap_or_default();
    if container.len() > MAX_LABEL_BYTES {
        let problem = format!("is over {MAX_LABEL_BYTES} bytes");
        return Err(invalid(join(path, "bk_container_id"), problem));
    }
    let user = opt_str(o, path, "user")?.unwrap_or_default();
    if !user.is_empty() {
        check_user(user)
            .map_err(|p| invalid(join(path, "user"), format!("{:?} {p}", quoted(user))))?;
    }
    Ok(AgentSpec {
        bk_agent_id: raw.to_string(),
        agent: parsed,
        bk_container_id: container.to_string(),
        user: user.to_string(),
    })
}

fn zone_name<'a>(o: &'a Fields, path: &str, name: &str) -> Result<&'a str, ApiError> {
    let zone = req_str(o, path, name)?;
    spec::check_zone(zone)
        .map_err(|p| invalid(join(path, name), format!("{:?} {p}", quoted(zone))))?;
    Ok(zone)
}

fn zone_chain(body: &Fields) -> Result<Vec<ZoneHop>, ApiError> {
    let items = array(body, "", "zone_chain", false, Max::Fixed(MAX_HOPS))?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut hops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("zone_chain[{i}]");
        let o = as_object(item, &path)?;
        let zone = zone_name(o, &path, "zone")?;
        if let Some(first) = seen.insert(zone, i) {
            let problem = format!("zone {zone:?} is a hop twice (also zone_chain[{first}])");
            return Err(invalid(format!("{path}.zone"), problem));
        }
        let relays = array(o, &path, "relays", true, Max::Fixed(MAX_RELAYS_PER_HOP))?;
        if relays.is_empty() {
            return Err(invalid(
                format!("{path}.relays"),
                "is empty; name at least one relay agent in the zone",
            ));
        }
        let relays = relays
            .iter()
            .enumerate()
            .map(|(j, r)| agent(r, &format!("{path}.relays[{j}]")))
            .collect::<Result<_, _>>()?;
        hops.push(ZoneHop {
            zone: zone.to_string(),
            relays,
        });
    }
    Ok(hops)
}

fn pass_through(body: &Fields) -> Result<Vec<ZonePair>, ApiError> {
    let items = array(
        body,
        "",
        "pass_through",
        false,
        Max::Fixed(MAX_PASS_THROUGH),
    )?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("pass_through[{i}]");
        let o = as_object(item, &path)?;
        let from = zone_name(o, &path, "from_zone")?;
        let to = zone_name(o, &path, "to_zone")?;
        if from == to {
            let problem = format!(
                "from_zone and to_zone are both {from:?}; agents of one zone always peer with each other"
            );
            return Err(invalid(path, problem));
        }
        out.push(ZonePair {
            from_zone: from.to_string(),
            to_zone: to.to_string(),
        });
    }
    Ok(out)
}

/// Refuses a transfer naming more distinct agents than one call may.
fn check_distinct_agents(spec: &TransferSpec, max: usize) -> Result<(), ApiError> {
    let mut agents: HashSet<String> = HashSet::new();
    let all = spec
        .tasks
        .iter()
        .flat_map(|t| t.source.agent().into_iter().chain(&t.targets))
        .chain(spec.zone_chain.iter().flat_map(|h| &h.relays));
    for a in all {
        agents.insert(a.agent.to_string());
        if agents.len() > max {
            return Err(ApiError::OverLimit {
                field: "tasks".into(),
                what: "distinct agents (sources, targets and relays)",
                count: agents.len(),
                limit: max,
                key: "api.max_hosts_per_call",
            });
        }
    }
    Ok(())
}

// === get_transfer_file_result, async_terminate_transfer_file ===

/// `agents` of a poll or terminate: `None` when absent or empty.
pub fn agent_names(body: &Fields, max_hosts: usize) -> Result<Option<Vec<AgentName>>, ApiError> {
    let items = array(
        body,
        "",
        "agents",
        false,
        Max::Config(max_hosts, "api.max_hosts_per_call"),
    )?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let a = agent(item, &format!("agents[{i}]"))?;
        out.push(AgentName {
            bk_agent_id: a.bk_agent_id,
            bk_container_id: a.bk_container_id,
        });
    }
    Ok(Some(out))
}

//! Reading the file-transfer requests (COMPAT.md §2.1) into typed requests
//! ([`super::body::typed`]: unknown fields ignored, errors naming the field
//! path), then checking every bound and building the file role's types,
//! naming the field that breaks one.
//!
//! Shapes are bk-job's: `tasks[{source:{file_name, store_dir, agent},
//! target:{file_name, store_dir, owner?, permission?, agents}}]`,
//! `timeout_seconds`, `auto_mkdir`, `upload_speed`, `download_speed`; plus
//! our `tasks[].source.file_type`, `zone_chain` and `pass_through`
//! (docs/API.md). Agents are `{bk_agent_id, bk_container_id?, user?, pwd?}`;
//! `pwd` is accepted and ignored. A field sent as null counts as absent
//! (a required one is then missing).

use std::collections::{HashMap, HashSet};
use std::fmt;

use gse_core::AgentRef;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use super::body::{Fields, typed};
use super::error::{ApiError, quoted};
use super::task_request::check_task_id;
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

// === the wire shapes ===

/// `async_transfer_file`: bk-job's `TransferFileRequest`, plus our
/// `zone_chain` and `pass_through`.
#[derive(Deserialize, ToSchema)]
pub struct TransferFile {
    /// One entry per source file spec, each with its targets:
    /// 1..=`file.max_tasks_per_transfer` entries. All tasks together name
    /// at most `api.max_hosts_per_call` distinct agents (sources, targets
    /// and relays).
    #[schema(required = true, value_type = Vec<TransferTask>)]
    tasks: Option<Vec<TransferTask>>,
    /// Seconds the transfer may take, at most `file.max_timeout`; 0 or
    /// absent = the configured default.
    #[serde(default)]
    #[schema(minimum = 0)]
    timeout_seconds: Option<u64>,
    /// Create missing target directories.
    auto_mkdir: Option<bool>,
    /// Upload speed cap per source, MB/s; 0 or negative = unlimited.
    #[serde(default)]
    upload_speed: Option<i64>,
    /// Download speed cap per target, MB/s; 0 or negative = unlimited.
    #[serde(default)]
    download_speed: Option<i64>,
    /// Ordered hops of a zone chain (our extension): relays that carry the
    /// files into each zone in turn; at most 16 hops, distinct zones.
    zone_chain: Option<Vec<TransferZoneHop>>,
    /// Pass-throughs asked for (our extension): targets in `to_zone` fetch
    /// from `from_zone`; allowed per app by `[[file.pass_through]]`. At
    /// most 16.
    pass_through: Option<Vec<TransferZonePair>>,
}

/// One task: a source file spec and where it goes.
#[derive(Deserialize, ToSchema)]
pub struct TransferTask {
    #[schema(required = true, value_type = TransferSource)]
    source: Option<TransferSource>,
    #[schema(required = true, value_type = TransferTarget)]
    target: Option<TransferTarget>,
}

/// What to send, from which agent.
#[derive(Deserialize, ToSchema)]
pub struct TransferSource {
    /// A file name, a regex or wildcard pattern (`file_type` 3 or 4), or a
    /// directory's name; empty or absent = the whole `store_dir` (a
    /// directory).
    file_name: Option<String>,
    /// The absolute directory the source files are in.
    #[schema(required = true, value_type = String)]
    store_dir: Option<String>,
    /// The agent that has the files.
    #[schema(required = true, value_type = TransferAgent)]
    agent: Option<TransferAgent>,
    /// bk-job's task type (our extension): 1 file, 2 directory, 3 regex,
    /// 4 wildcard; absent = inferred from `file_name` (empty: directory,
    /// glob characters: wildcard, else a file).
    #[serde(default)]
    #[schema(minimum = 0)]
    file_type: Option<u64>,
}

/// Where and how the targets install what they get.
#[derive(Deserialize, ToSchema)]
pub struct TransferTarget {
    /// A new name for the file; empty or absent = the source's name.
    file_name: Option<String>,
    /// The absolute directory the files go to.
    #[schema(required = true, value_type = String)]
    store_dir: Option<String>,
    /// `user` or `user:group` owning the files; empty or absent = each
    /// target's `user`.
    owner: Option<String>,
    /// Mode bits; absent, empty or 0 = keep the source's.
    permission: Option<FilePermission>,
    /// The target agents: 1..=`api.max_hosts_per_call`, each (agent,
    /// container) once.
    #[schema(required = true, value_type = Vec<TransferAgent>)]
    agents: Option<Vec<TransferAgent>>,
}

/// An agent as bk-job names it.
#[derive(Deserialize, ToSchema)]
pub struct TransferAgent {
    /// The agent id, or `cloud:ip`; echoed in results exactly as sent.
    #[schema(required = true, value_type = String)]
    bk_agent_id: Option<String>,
    /// A container on the host; empty or absent = the host itself.
    bk_container_id: Option<String>,
    /// The execution account; a target's default owner.
    user: Option<String>,
    /// bk-job's account password: accepted and ignored.
    #[allow(dead_code)]
    #[schema(value_type = Option<String>)]
    pwd: Option<IgnoredAny>,
}

/// One hop of a zone chain.
#[derive(Deserialize, ToSchema)]
pub struct TransferZoneHop {
    /// The zone the hop carries the files into ("" is the default zone).
    #[schema(required = true, value_type = String)]
    zone: Option<String>,
    /// Relay agents in that zone: 1..=100.
    #[schema(required = true, value_type = Vec<TransferAgent>)]
    relays: Option<Vec<TransferAgent>>,
}

/// A pass-through: targets in `to_zone` fetch from `from_zone`.
#[derive(Deserialize, ToSchema)]
pub struct TransferZonePair {
    /// The zone the bytes come from ("" is the default zone).
    #[schema(required = true, value_type = String)]
    from_zone: Option<String>,
    /// The targets' zone; not `from_zone`.
    #[schema(required = true, value_type = String)]
    to_zone: Option<String>,
}

/// `get_transfer_file_result` and `async_terminate_transfer_file`.
#[derive(Deserialize, ToSchema)]
pub struct TransferQuery {
    /// The task id `async_transfer_file` answered.
    #[schema(required = true, value_type = String)]
    task_id: Option<String>,
    /// The agents asked about (at most `api.max_hosts_per_call`); absent
    /// or empty = all of them.
    agents: Option<Vec<TransferAgent>>,
}

/// chmod digits as a number (`755`) or a string (`"0644"`, `"0o600"`):
/// what is read is the digits, in octal.
pub struct FilePermission(String);

impl<'de> Deserialize<'de> for FilePermission {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Digits;
        impl Visitor<'_> for Digits {
            type Value = FilePermission;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("octal digits as a number or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FilePermission, E> {
                Ok(FilePermission(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FilePermission, E> {
                Ok(FilePermission(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FilePermission, E> {
                // As JSON writes it ("7.5"): refused as digits later.
                let text = serde_json::Number::from_f64(v)
                    .map_or_else(|| v.to_string(), |n| n.to_string());
                Ok(FilePermission(text))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FilePermission, E> {
                Ok(FilePermission(v.to_string()))
            }
        }
        d.deserialize_any(Digits)
    }
}

impl utoipa::PartialSchema for FilePermission {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "chmod digits, read as octal: a number (755) or a string (\"0644\", \
                 \"0o600\"); at most 7777",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(ObjectBuilder::new().schema_type(Type::String))
            .into()
    }
}

impl ToSchema for FilePermission {}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A required field, `None` when absent or null.
fn required<T>(v: Option<T>, field: impl FnOnce() -> String) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::MissingField { field: field() })
}

/// A required list's entries, refused when over `max`.
fn bounded<T>(items: &[T], field: impl FnOnce() -> String, max: Max) -> Result<&[T], ApiError> {
    match max {
        Max::Config(limit, key) if items.len() > limit => Err(ApiError::OverLimit {
            field: field(),
            what: "entries",
            count: items.len(),
            limit,
            key,
        }),
        Max::Fixed(limit) if items.len() > limit => Err(invalid(
            field(),
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
    let req: TransferFile = typed(body)?;
    req.check(limits)
}

impl TransferFile {
    /// The transfer, once every field is within its bounds.
    fn check(self, limits: &Limits) -> Result<TransferSpec, ApiError> {
        let items = required(self.tasks, || "tasks".into())?;
        bounded(
            &items,
            || "tasks".into(),
            Max::Config(limits.max_tasks, "file.max_tasks_per_transfer"),
        )?;
        if items.is_empty() {
            return Err(invalid("tasks", "is empty; give at least one source file"));
        }
        let mut tasks = Vec::with_capacity(items.len());
        let mut entries = 0usize;
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("tasks[{i}]");
            let task = item.check(&path, limits)?;
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
            timeout_seconds: timeout(self.timeout_seconds, limits)?,
            auto_mkdir: self.auto_mkdir.unwrap_or(false),
            upload_speed: speed(self.upload_speed, "upload_speed")?,
            download_speed: speed(self.download_speed, "download_speed")?,
            zone_chain: zone_chain(self.zone_chain.unwrap_or_default())?,
            pass_through: pass_through(self.pass_through.unwrap_or_default())?,
        };
        check_distinct_agents(&spec, limits.max_hosts)?;
        Ok(spec)
    }
}

fn timeout(t: Option<u64>, limits: &Limits) -> Result<u64, ApiError> {
    let t = t.unwrap_or(0);
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
fn speed(n: Option<i64>, name: &str) -> Result<u64, ApiError> {
    let n = n.unwrap_or(0).max(0) as u64;
    if n > MAX_SPEED_MB {
        let problem = format!("{n} MB/s is over {MAX_SPEED_MB}; send 0 for no limit");
        return Err(invalid(name, problem));
    }
    Ok(n)
}

impl TransferTask {
    fn check(self, path: &str, limits: &Limits) -> Result<FileTaskSpec, ApiError> {
        let spath = format!("{path}.source");
        let source = required(self.source, || spath.clone())?.check(&spath)?;
        let tpath = format!("{path}.target");
        let t = required(self.target, || tpath.clone())?;
        let target = target_dir(t.store_dir, t.file_name, t.owner, t.permission, &tpath)?;
        let agents = required(t.agents, || format!("{tpath}.agents"))?;
        bounded(
            &agents,
            || format!("{tpath}.agents"),
            Max::Config(limits.max_hosts, "api.max_hosts_per_call"),
        )?;
        if agents.is_empty() {
            return Err(invalid(
                format!("{tpath}.agents"),
                "is empty; name at least one target agent",
            ));
        }
        let mut seen: HashMap<(String, String), usize> = HashMap::with_capacity(agents.len());
        let mut targets = Vec::with_capacity(agents.len());
        for (j, item) in agents.into_iter().enumerate() {
            let apath = format!("{tpath}.agents[{j}]");
            let a = item.check(&apath)?;
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
}

impl TransferSource {
    fn check(self, path: &str) -> Result<SourceSpec, ApiError> {
        let apath = format!("{path}.agent");
        let agent = required(self.agent, || apath.clone())?.check(&apath)?;
        let store_dir = store_dir(self.store_dir, path)?;
        let file_name = self.file_name.unwrap_or_default();
        let kind = match self.file_type {
            None => FileKind::infer(&file_name),
            Some(n) => FileKind::from_job(n).ok_or_else(|| {
                invalid(
                    format!("{path}.file_type"),
                    format!(
                        "{n} is not a file type: use 1 (file), 2 (directory), 3 (regex) or 4 (wildcard)"
                    ),
                )
            })?,
        };
        let name_field = format!("{path}.file_name");
        let named = |p: &str| format!("{:?} {p}", quoted(&file_name));
        match kind {
            FileKind::File if file_name.is_empty() => {
                return Err(invalid(
                    name_field,
                    "is empty; a file task (file_type 1) names the file",
                ));
            }
            FileKind::File => {
                spec::check_plain_name(&file_name).map_err(|p| invalid(&name_field, named(p)))?
            }
            FileKind::Dir if file_name.is_empty() => {}
            FileKind::Dir => {
                spec::check_plain_name(&file_name).map_err(|p| invalid(&name_field, named(p)))?
            }
            FileKind::Regex | FileKind::Wildcard => {
                spec::check_pattern(&file_name).map_err(|p| invalid(&name_field, p))?
            }
        }
        Ok(SourceSpec {
            from: SourceFrom::Agent(agent),
            store_dir,
            file_name,
            kind,
        })
    }
}

fn store_dir(dir: Option<String>, path: &str) -> Result<String, ApiError> {
    let field = || format!("{path}.store_dir");
    let dir = required(dir, field)?;
    check_store_dir(&dir).map_err(|p| invalid(field(), format!("{:?} {p}", quoted(&dir))))?;
    Ok(dir)
}

fn target_dir(
    store: Option<String>,
    file_name: Option<String>,
    owner: Option<String>,
    permission: Option<FilePermission>,
    path: &str,
) -> Result<TargetDirSpec, ApiError> {
    let store_dir = store_dir(store, path)?;
    let file_name = file_name.unwrap_or_default();
    if !file_name.is_empty() {
        spec::check_plain_name(&file_name).map_err(|p| {
            invalid(
                format!("{path}.file_name"),
                format!("{:?} {p}", quoted(&file_name)),
            )
        })?;
    }
    let owner = owner.unwrap_or_default();
    if !owner.is_empty() {
        spec::check_owner(&owner)
            .map_err(|p| invalid(format!("{path}.owner"), format!("{:?} {p}", quoted(&owner))))?;
    }
    let permission = match permission {
        None => 0,
        Some(FilePermission(digits)) if digits.is_empty() => 0,
        Some(FilePermission(digits)) => {
            spec::parse_permission(&digits).map_err(|p| invalid(format!("{path}.permission"), p))?
        }
    };
    Ok(TargetDirSpec {
        store_dir,
        file_name,
        owner,
        permission,
    })
}

impl TransferAgent {
    fn check(self, path: &str) -> Result<AgentSpec, ApiError> {
        let raw = required(self.bk_agent_id, || format!("{path}.bk_agent_id"))?;
        let parsed = AgentRef::parse(&raw).map_err(|source| ApiError::BadAgentId {
            field: format!("{path}.bk_agent_id"),
            source,
        })?;
        let container = self.bk_container_id.unwrap_or_default();
        if container.len() > MAX_LABEL_BYTES {
            let problem = format!("is over {MAX_LABEL_BYTES} bytes");
            return Err(invalid(format!("{path}.bk_container_id"), problem));
        }
        let user = self.user.unwrap_or_default();
        if !user.is_empty() {
            check_user(&user)
                .map_err(|p| invalid(format!("{path}.user"), format!("{:?} {p}", quoted(&user))))?;
        }
        Ok(AgentSpec {
            bk_agent_id: raw,
            agent: parsed,
            bk_container_id: container,
            user,
        })
    }
}

fn zone_name(zone: Option<String>, path: &str, name: &str) -> Result<String, ApiError> {
    let field = || format!("{path}.{name}");
    let zone = required(zone, field)?;
    spec::check_zone(&zone).map_err(|p| invalid(field(), format!("{:?} {p}", quoted(&zone))))?;
    Ok(zone)
}

fn zone_chain(items: Vec<TransferZoneHop>) -> Result<Vec<ZoneHop>, ApiError> {
    bounded(&items, || "zone_chain".into(), Max::Fixed(MAX_HOPS))?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut hops = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("zone_chain[{i}]");
        let zone = zone_name(item.zone, &path, "zone")?;
        if let Some(first) = seen.insert(zone.clone(), i) {
            let problem = format!("zone {zone:?} is a hop twice (also zone_chain[{first}])");
            return Err(invalid(format!("{path}.zone"), problem));
        }
        let relays = required(item.relays, || format!("{path}.relays"))?;
        bounded(
            &relays,
            || format!("{path}.relays"),
            Max::Fixed(MAX_RELAYS_PER_HOP),
        )?;
        if relays.is_empty() {
            return Err(invalid(
                format!("{path}.relays"),
                "is empty; name at least one relay agent in the zone",
            ));
        }
        let relays = relays
            .into_iter()
            .enumerate()
            .map(|(j, r)| r.check(&format!("{path}.relays[{j}]")))
            .collect::<Result<_, _>>()?;
        hops.push(ZoneHop { zone, relays });
    }
    Ok(hops)
}

fn pass_through(items: Vec<TransferZonePair>) -> Result<Vec<ZonePair>, ApiError> {
    bounded(
        &items,
        || "pass_through".into(),
        Max::Fixed(MAX_PASS_THROUGH),
    )?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("pass_through[{i}]");
        let from = zone_name(item.from_zone, &path, "from_zone")?;
        let to = zone_name(item.to_zone, &path, "to_zone")?;
        if from == to {
            let problem = format!(
                "from_zone and to_zone are both {from:?}; agents of one zone always peer with each other"
            );
            return Err(invalid(path, problem));
        }
        out.push(ZonePair {
            from_zone: from,
            to_zone: to,
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

/// A poll or terminate: the task, and the agents named (`None` when
/// `agents` is absent or empty: all).
pub fn query(
    body: &Fields,
    max_hosts: usize,
) -> Result<(String, Option<Vec<AgentName>>), ApiError> {
    let q: TransferQuery = typed(body)?;
    let task_id = check_task_id(required(q.task_id, || "task_id".into())?)?;
    let items = q.agents.unwrap_or_default();
    bounded(
        &items,
        || "agents".into(),
        Max::Config(max_hosts, "api.max_hosts_per_call"),
    )?;
    if items.is_empty() {
        return Ok((task_id, None));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let a = item.check(&format!("agents[{i}]"))?;
        out.push(AgentName {
            bk_agent_id: a.bk_agent_id,
            bk_container_id: a.bk_container_id,
        });
    }
    Ok((task_id, Some(out)))
}

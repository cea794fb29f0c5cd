//! The agent status and info endpoints (A1, COMPAT.md §2.1, §2.2).
//!
//! Each handler reads its request (bounded by `max_hosts_per_call`), asks the
//! state store once, and shapes the answer exactly as the client reads it.
//! Field names and key sets are the wire contract; docs/API.md shows them.

use std::collections::{BTreeMap, HashSet};

use gse_core::identity::{AgentKey, AgentRef};
use gse_core::seams::AgentRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::body::{Fields, cloud_id, typed};
use super::error::{ApiError, quoted};
use super::openapi::{Shape, answer};

/// `status_code` of a connected agent: the only value bk-job and bk-nodeman
/// both read as alive.
const STATUS_RUNNING: i32 = 2;
/// `status_code` of a known agent that is not connected. 5 and 6 mean
/// different things to bk-job and bk-nodeman (COMPAT.md §2.1 CONFLICT), so we
/// answer "not found", which both read as "not alive".
const STATUS_OFFLINE: i32 = -2;

/// The request of the v1 calls.
#[derive(Deserialize, ToSchema)]
pub(super) struct HostsRequest {
    /// The hosts asked about, at most `api.max_hosts_per_call`.
    hosts: Vec<HostName>,
}

/// A v1 host: `{ip, bk_cloud_id}`.
#[derive(Deserialize, ToSchema)]
struct HostName {
    /// IPv4 or IPv6 address, answered back exactly as sent.
    ip: String,
    /// Cloud area id, an integer >= 0 (a number in a string is refused).
    #[schema(value_type = i64, minimum = 0)]
    bk_cloud_id: Option<serde_json::Number>,
}

/// The request of the v2 calls that name agents.
#[derive(Deserialize, ToSchema)]
pub(super) struct AgentIdsRequest {
    /// Agent ids, or `cloud:ip` for agents registered without one; at most
    /// `api.max_hosts_per_call`. An id listed again is answered once.
    agent_id_list: Vec<String>,
}

/// The request of `list_agents`.
#[derive(Deserialize, ToSchema)]
pub(super) struct ListAgentsRequest {
    /// Only the agents connected now.
    #[serde(default)]
    alive_only: Option<bool>,
}

/// A v1 host as the caller named it; `ip` is kept as sent so the answer's
/// `"cloud:ip"` keys match the caller's own lookup.
struct Host {
    ip: String,
    key: AgentKey,
}

/// `hosts: [{ip, bk_cloud_id}]` of the v1 calls.
fn parse_hosts(ctx: &ApiContext, body: &Fields) -> Result<Vec<Host>, ApiError> {
    let req: HostsRequest = typed(body)?;
    check_count("hosts", req.hosts.len(), ctx)?;
    let mut hosts = Vec::with_capacity(req.hosts.len());
    for (i, item) in req.hosts.into_iter().enumerate() {
        let path = format!("hosts[{i}]");
        let ip = item.ip.trim().parse().map_err(|_| ApiError::BadIp {
            field: format!("{path}.ip"),
            value: quoted(&item.ip),
        })?;
        let cloud_id = cloud_id(item.bk_cloud_id, &path)?;
        hosts.push(Host {
            ip: item.ip,
            key: AgentKey::new(cloud_id, ip),
        });
    }
    Ok(hosts)
}

/// A list over `api.max_hosts_per_call` is refused with 413.
fn check_count(field: &'static str, count: usize, ctx: &ApiContext) -> Result<(), ApiError> {
    let limit = ctx.config.max_hosts_per_call;
    if count > limit {
        return Err(ApiError::TooManyEntries {
            field,
            count,
            limit,
        });
    }
    Ok(())
}

/// `agent_id_list: [string]` of the v2 calls, each `cloud:ip` or a real id;
/// an id listed again is answered once.
pub(super) fn agent_ids(
    ctx: &ApiContext,
    list: Vec<String>,
) -> Result<Vec<(String, AgentRef)>, ApiError> {
    check_count("agent_id_list", list.len(), ctx)?;
    let mut ids = Vec::with_capacity(list.len());
    let mut seen = HashSet::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let field = format!("agent_id_list[{i}]");
        let agent =
            AgentRef::parse(&raw).map_err(|source| ApiError::BadAgentId { field, source })?;
        if seen.insert(raw.clone()) {
            ids.push((raw, agent));
        }
    }
    Ok(ids)
}

async fn lookup_hosts(
    ctx: &ApiContext,
    hosts: &[Host],
) -> Result<Vec<Option<AgentRecord>>, ApiError> {
    let refs: Vec<AgentRef> = hosts.iter().map(|h| AgentRef::Key(h.key)).collect();
    Ok(ctx.store.get_agents(&refs).await?)
}

/// The known agents among `ids`, in request order, each with the id the
/// caller sent; 1011003 when none is known.
async fn lookup_ids(
    ctx: &ApiContext,
    body: &Fields,
) -> Result<Vec<(String, AgentRecord)>, ApiError> {
    let req: AgentIdsRequest = typed(body)?;
    let ids = agent_ids(ctx, req.agent_id_list)?;
    let refs: Vec<AgentRef> = ids.iter().map(|(_, r)| r.clone()).collect();
    let records = ctx.store.get_agents(&refs).await?;
    let found: Vec<(String, AgentRecord)> = ids
        .into_iter()
        .zip(records)
        .filter_map(|((sent, _), record)| record.map(|r| (sent, r)))
        .collect();
    if found.is_empty() && !refs.is_empty() {
        return Err(ApiError::NoAgentFound { asked: refs.len() });
    }
    Ok(found)
}

fn status_code(record: &AgentRecord) -> i32 {
    if record.alive {
        STATUS_RUNNING
    } else {
        STATUS_OFFLINE
    }
}

/// A percentage as the API shows it: two decimals, never NaN.
fn rate(percent: f32) -> f64 {
    let p = f64::from(percent);
    if p.is_finite() {
        (p * 100.0).round() / 100.0
    } else {
        0.0
    }
}

pub fn shape_status_v1() -> Shape {
    Shape::of::<HostsRequest, AgentStatusByHost<'static>>()
}

pub fn shape_info_v1() -> Shape {
    Shape::of::<HostsRequest, AgentInfoByHost<'static>>()
}

pub fn shape_state_v2() -> Shape {
    Shape::of::<AgentIdsRequest, Vec<AgentState<'static>>>()
}

pub fn shape_info_v2() -> Shape {
    Shape::of::<AgentIdsRequest, Vec<AgentInfoV2<'static>>>()
}

pub fn shape_list() -> Shape {
    Shape::of::<ListAgentsRequest, AgentList<'static>>()
}

// === v1: get_agent_status, get_agent_info ===

/// `get_agent_status`: every requested host by `"cloud:ip"`.
#[derive(Serialize, ToSchema)]
struct AgentStatusByHost<'a>(BTreeMap<String, AgentStatus<'a>>);

/// `get_agent_info`: the known hosts by `"cloud:ip"`.
#[derive(Serialize, ToSchema)]
struct AgentInfoByHost<'a>(BTreeMap<String, AgentInfoV1<'a>>);

#[derive(Serialize, ToSchema)]
struct AgentStatus<'a> {
    ip: &'a str,
    bk_cloud_id: i64,
    bk_agent_alive: u8,
}

/// Every requested host, unknown ones with `bk_agent_alive: 0`.
pub async fn get_agent_status(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let hosts = parse_hosts(ctx, body)?;
    let records = lookup_hosts(ctx, &hosts).await?;
    let mut data = BTreeMap::new();
    for (host, record) in hosts.iter().zip(&records) {
        let alive = record.as_ref().is_some_and(|r| r.alive);
        let status = AgentStatus {
            ip: &host.ip,
            bk_cloud_id: host.key.cloud_id,
            bk_agent_alive: alive.into(),
        };
        data.insert(format!("{}:{}", host.key.cloud_id, host.ip), status);
    }
    answer(&AgentStatusByHost(data))
}

#[derive(Serialize, ToSchema)]
struct AgentInfoV1<'a> {
    ip: &'a str,
    version: &'a str,
    bk_cloud_id: i64,
    parent_ip: &'a str,
    parent_port: u16,
}

/// Known hosts only; bk-nodeman fills in the missing ones itself.
pub async fn get_agent_info(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let hosts = parse_hosts(ctx, body)?;
    let records = lookup_hosts(ctx, &hosts).await?;
    let mut data = BTreeMap::new();
    for (host, record) in hosts.iter().zip(&records) {
        let Some(r) = record else { continue };
        let info = AgentInfoV1 {
            ip: &host.ip,
            version: &r.version,
            bk_cloud_id: host.key.cloud_id,
            parent_ip: &r.parent_ip,
            parent_port: r.parent_port,
        };
        data.insert(format!("{}:{}", host.key.cloud_id, host.ip), info);
    }
    answer(&AgentInfoByHost(data))
}

// === v2: list_agent_state, list_agent_info ===

#[derive(Serialize, ToSchema)]
struct AgentState<'a> {
    bk_agent_id: &'a str,
    bk_cloud_id: i64,
    version: &'a str,
    run_mode: u32,
    status_code: i32,
}

pub async fn list_agent_state(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let found = lookup_ids(ctx, body).await?;
    let states: Vec<AgentState<'_>> = found
        .iter()
        .map(|(sent, r)| AgentState {
            bk_agent_id: sent,
            bk_cloud_id: r.key.cloud_id,
            version: &r.version,
            run_mode: r.run_mode,
            status_code: status_code(r),
        })
        .collect();
    answer(&states)
}

#[derive(Serialize, ToSchema)]
struct AgentInfoV2<'a> {
    code: i32,
    message: &'a str,
    bk_agent_id: &'a str,
    bk_cloud_id: i64,
    bk_host_ip: String,
    bk_os_type: &'a str,
    report_time: u64,
    parent_ip: &'a str,
    parent_port: u16,
    version: &'a str,
    cpu_rate: f64,
    mem_rate: f64,
    start_time: u64,
    run_mode: u32,
    status_code: i32,
    status: &'a str,
    last_status_code: i32,
    last_status: &'a str,
    remark: &'a str,
}

impl<'a> AgentInfoV2<'a> {
    fn new(sent: &'a str, r: &'a AgentRecord) -> Self {
        let status = if r.alive { "running" } else { "offline" };
        AgentInfoV2 {
            code: 0,
            message: "",
            bk_agent_id: sent,
            bk_cloud_id: r.key.cloud_id,
            bk_host_ip: r.key.ip.to_string(),
            bk_os_type: &r.os_type,
            report_time: r.last_seen_ms,
            parent_ip: &r.parent_ip,
            parent_port: r.parent_port,
            version: &r.version,
            cpu_rate: rate(r.cpu_percent),
            mem_rate: rate(r.mem_percent),
            start_time: r.start_time_s,
            run_mode: r.run_mode,
            status_code: status_code(r),
            status,
            last_status_code: status_code(r),
            last_status: status,
            remark: "",
        }
    }
}

pub async fn list_agent_info(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let found = lookup_ids(ctx, body).await?;
    let infos: Vec<AgentInfoV2<'_>> = found
        .iter()
        .map(|(sent, r)| AgentInfoV2::new(sent, r))
        .collect();
    answer(&infos)
}

// === extension: list_agents ===

#[derive(Serialize, ToSchema)]
struct AgentSummary<'a> {
    bk_agent_id: &'a str,
    agent_key: String,
    bk_cloud_id: i64,
    ip: String,
    alive: bool,
    version: &'a str,
    hostname: &'a str,
    os_type: &'a str,
    run_mode: u32,
    node_id: &'a str,
    parent_ip: &'a str,
    parent_port: u16,
    peer_addr: &'a str,
    cpu_rate: f64,
    mem_rate: f64,
    mem_bytes: u64,
    start_time: u64,
    connected_at: u64,
    report_time: u64,
}

impl<'a> AgentSummary<'a> {
    fn new(r: &'a AgentRecord) -> Self {
        AgentSummary {
            bk_agent_id: &r.agent_id,
            agent_key: r.key.to_string(),
            bk_cloud_id: r.key.cloud_id,
            ip: r.key.ip.to_string(),
            alive: r.alive,
            version: &r.version,
            hostname: &r.hostname,
            os_type: &r.os_type,
            run_mode: r.run_mode,
            node_id: &r.node_id,
            parent_ip: &r.parent_ip,
            parent_port: r.parent_port,
            peer_addr: &r.peer_addr,
            cpu_rate: rate(r.cpu_percent),
            mem_rate: rate(r.mem_percent),
            mem_bytes: r.mem_bytes,
            start_time: r.start_time_s,
            connected_at: r.connected_at_ms,
            report_time: r.last_seen_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct AgentList<'a> {
    total: usize,
    agents: Vec<AgentSummary<'a>>,
}

/// Every known agent (or only the connected ones), sorted by cloud id then IP.
pub async fn list_agents(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let req: ListAgentsRequest = typed(body)?;
    let alive_only = req.alive_only.unwrap_or(false);
    let mut records = ctx.store.list_agents().await?;
    records.retain(|r| r.alive || !alive_only);
    records.sort_by_key(|r| r.key);
    let agents: Vec<AgentSummary<'_>> = records.iter().map(AgentSummary::new).collect();
    answer(&AgentList {
        total: agents.len(),
        agents,
    })
}

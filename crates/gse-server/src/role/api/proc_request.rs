//! Reading the process-operation requests (COMPAT §2.2, §4.3) into the
//! proc role's types: the body is read into a typed request
//! ([`typed`]: unknown fields such as `nodeman_spec` are ignored, an error
//! names the field path), then every bound is checked, naming the field
//! that breaks one.
//!
//! An operation is `{meta:{namespace, name, labels?}, op_type,
//! agent_id_list | hosts:[{ip, bk_cloud_id}], spec:{identity, control,
//! resource, alive_monitor_policy}}`; null counts as absent everywhere.
//! Unknown op types are accepted here and answered 832 per entry, as GSE
//! does.

use std::collections::BTreeMap;
use std::fmt;

use gse_core::{AgentKey, AgentRef};
use gse_proto::link::ProcSpec;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde_json::{Map, Number, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use super::body::{Fields, cloud_id, typed};
use super::error::{ApiError, quoted};
use crate::role::proc::OpRequest;

/// Longest namespace, name, label or spec string taken.
const MAX_TEXT: usize = 4096;
/// Most labels per operation.
const MAX_LABELS: usize = 32;

// === the requests, as clients send them ===

/// `operate_proc_multi`.
#[derive(Deserialize, ToSchema)]
pub struct OperateProcMulti {
    /// The operations, at least one. Their (operation, agent) pairs count
    /// together against `api.max_hosts_per_call`.
    proc_operate_req: Vec<ProcOperation>,
}

/// One plugin process operation (bk-nodeman's proc op object; the whole
/// body of the legacy `operate_proc`): `op_type` on plugin `meta` on the
/// agents of `agent_id_list` (v2) or `hosts` (v1), as `spec` says.
/// `nodeman_spec` and other fields are ignored.
#[derive(Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcOperation {
    /// The plugin.
    #[schema(value_type = ProcOperationMeta)]
    meta: Option<ProcOperationMeta>,
    /// 0 start, 1 stop, 2 status, 3 delegate (host it), 4 undelegate,
    /// 7 restart, 8 reload, 9 kill. An unknown type is accepted and each
    /// of its entries answers 832.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = u32, required = true)]
    op_type: Option<Number>,
    /// The agents (v2): agent ids or `cloud:ip`, at least one. When
    /// present (not null), `hosts` is not read.
    agent_id_list: Option<Vec<String>>,
    /// The agents (v1), read when `agent_id_list` is absent or null; each
    /// is named `cloud:ip` in the results.
    #[schema(value_type = Option<Vec<ProcHost>>)]
    hosts: Option<Value>,
    /// How the agent runs and checks the plugin; absent parts are empty.
    spec: Option<ProcOperationSpec>,
}

/// The plugin an operation is about.
#[derive(Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcOperationMeta {
    /// `nodeman` for bk-nodeman's plugins; 1 to 128 characters of
    /// `[A-Za-z0-9._-]` (it names files on the agent).
    #[schema(value_type = String)]
    namespace: Option<String>,
    /// The plugin's name; 1 to 128 characters of `[A-Za-z0-9._-]`.
    #[schema(value_type = String)]
    name: Option<String>,
    /// At most 32 (keys up to 128 bytes, values up to 4096): string values
    /// are kept, numbers and booleans kept as text, other values ignored.
    labels: Option<Map<String, Value>>,
}

/// A v1 host.
#[derive(Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcHost {
    /// The agent's IP address (spaces around it ignored).
    #[schema(value_type = String)]
    ip: Option<String>,
    /// The agent's cloud area id, an integer >= 0 (not a string).
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = i64, minimum = 0, required = true)]
    bk_cloud_id: Option<Number>,
}

/// How the agent runs and checks a plugin.
#[derive(Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcOperationSpec {
    identity: Option<ProcIdentity>,
    control: Option<ProcControl>,
    resource: Option<ProcResource>,
    alive_monitor_policy: Option<ProcAlivePolicy>,
}

/// Where the plugin is and who runs it; each string at most 4096 bytes,
/// absent ones empty.
#[derive(Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcIdentity {
    /// Empty for bk-nodeman's plugins.
    index_key: Option<String>,
    /// The binary's name.
    proc_name: Option<String>,
    /// The directory the control commands run in.
    setup_path: Option<String>,
    pid_path: Option<String>,
    /// The user the commands run as.
    user: Option<String>,
    config_path: Option<String>,
    log_path: Option<String>,
}

/// The plugin's control commands, run in `identity.setup_path`; each at
/// most 4096 bytes, absent ones empty.
#[derive(Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcControl {
    start_cmd: Option<String>,
    stop_cmd: Option<String>,
    restart_cmd: Option<String>,
    reload_cmd: Option<String>,
    kill_cmd: Option<String>,
    version_cmd: Option<String>,
    health_cmd: Option<String>,
}

/// Resource limits of a hosted plugin; absent ones 0.
#[derive(Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcResource {
    /// CPU limit, percent 0 to 100 (a number or a numeric string).
    #[schema(schema_with = percent_schema)]
    cpu: Option<Value>,
    /// Memory limit, percent 0 to 100 (a number or a numeric string).
    #[schema(schema_with = percent_schema)]
    mem: Option<Value>,
}

/// How a hosted plugin is kept alive; integers >= 0, absent ones 0.
#[derive(Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcAlivePolicy {
    /// 0 periodic, 1 resident, 2 single execution.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    auto_type: Option<Number>,
    /// Seconds after start before checking the process is alive.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    start_check_secs: Option<Number>,
    /// Seconds after stop before checking the process is gone.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    stop_check_secs: Option<Number>,
    /// Starts tried before giving up.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    start_retries: Option<Number>,
    /// Seconds between starts.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    start_interval: Option<Number>,
    /// Seconds an operation may take.
    #[serde(default, deserialize_with = "integer")]
    #[schema(value_type = Option<u32>)]
    op_timeout: Option<Number>,
}

/// `get_proc_operate_result_v2`.
#[derive(Deserialize, ToSchema)]
pub struct ProcTaskQuery {
    /// The task id `operate_proc_multi` answered (1 to 256 characters).
    #[schema(value_type = String)]
    task_id: Option<String>,
}

/// `get_proc_status_v2` (and bk-monitor's `get_proc_status`): one plugin
/// on the agents of `agent_id_list` (or v1 `hosts`).
#[derive(Deserialize, ToSchema)]
pub struct ProcStatusQuery {
    /// The plugin (its `labels` are not read).
    #[schema(value_type = ProcStatusMeta)]
    meta: Option<ProcStatusMeta>,
    /// bk-monitor's older calls send the namespace here, beside `meta`;
    /// `meta.namespace` wins.
    namespace: Option<String>,
    /// The agents (v2): agent ids or `cloud:ip`, at least one. When
    /// present (not null), `hosts` is not read.
    agent_id_list: Option<Vec<String>>,
    /// The agents (v1), read when `agent_id_list` is absent or null.
    #[schema(value_type = Option<Vec<ProcHost>>)]
    hosts: Option<Value>,
}

/// The plugin whose status is asked.
#[derive(Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct ProcStatusMeta {
    /// Required here or as the body's `namespace`.
    namespace: Option<String>,
    #[schema(value_type = String)]
    name: Option<String>,
}

/// A JSON number, kept as sent so the check can say what is wrong with
/// it; null is absent. Anything else, a number in a string included, is
/// refused: every client sends these as numbers (COMPAT §2).
fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
    struct Integer;
    impl<'de> Visitor<'de> for Integer {
        type Value = Option<Number>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.into()))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.into()))
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
            Number::from_f64(n)
                .map(Some)
                .ok_or_else(|| E::invalid_value(Unexpected::Float(n), &self))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_any(Integer)
}

/// A percent: a number, or a numeric string.
fn percent_schema() -> RefOr<Schema> {
    let bounded = |t| {
        ObjectBuilder::new()
            .schema_type(t)
            .minimum(Some(0))
            .maximum(Some(100))
    };
    OneOfBuilder::new()
        .item(bounded(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("a number 0 to 100 in text")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

// === reading and checking ===

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `operate_proc_multi`: every operation of `proc_operate_req`. The total
/// of (operation, agent) pairs is bounded by `max_hosts`.
pub fn operate_multi(body: &Fields, max_hosts: usize) -> Result<Vec<OpRequest>, ApiError> {
    let req: OperateProcMulti = typed(body)?;
    let items = req.proc_operate_req;
    if items.len() > max_hosts {
        return Err(ApiError::TooManyEntries {
            field: "proc_operate_req",
            count: items.len(),
            limit: max_hosts,
        });
    }
    if items.is_empty() {
        return Err(invalid(
            "proc_operate_req",
            "is empty; send at least one operation",
        ));
    }
    let mut ops = Vec::with_capacity(items.len());
    let mut pairs = 0;
    for (i, item) in items.into_iter().enumerate() {
        let op = operation(item, &format!("proc_operate_req[{i}]"), max_hosts)?;
        pairs += op.targets.len();
        if pairs > max_hosts {
            return Err(ApiError::TooManyEntries {
                field: "proc_operate_req[].agent_id_list",
                count: pairs,
                limit: max_hosts,
            });
        }
        ops.push(op);
    }
    Ok(ops)
}

/// The legacy single-operation calls: the body is the operation.
pub fn operate_one(body: &Fields, max_hosts: usize) -> Result<Vec<OpRequest>, ApiError> {
    let op: ProcOperation = typed(body)?;
    Ok(vec![operation(op, "", max_hosts)?])
}

/// `{task_id}`.
pub fn task_id(body: &Fields) -> Result<String, ApiError> {
    let req: ProcTaskQuery = typed(body)?;
    let id = req.task_id.ok_or_else(|| ApiError::MissingField {
        field: "task_id".into(),
    })?;
    if id.is_empty() || id.len() > 256 {
        return Err(invalid("task_id", "must be 1 to 256 characters"));
    }
    Ok(id)
}

/// `get_proc_status_v2`: the plugin's namespace and name, and the agents.
#[derive(Debug)]
pub struct StatusQuery {
    pub namespace: String,
    pub name: String,
    pub agents: Vec<(String, AgentRef)>,
}

pub fn status_query(body: &Fields, max_hosts: usize) -> Result<StatusQuery, ApiError> {
    let req: ProcStatusQuery = typed(body)?;
    let meta = req.meta.unwrap_or_default();
    // bk-monitor's older calls send `namespace` beside `meta`.
    let namespace = text(meta.namespace, "meta", "namespace")?
        .or(text(req.namespace, "", "namespace")?)
        .ok_or_else(|| ApiError::MissingField {
            field: "meta.namespace".into(),
        })?;
    let name = text(meta.name, "meta", "name")?.ok_or_else(|| ApiError::MissingField {
        field: "meta.name".into(),
    })?;
    Ok(StatusQuery {
        namespace,
        name,
        agents: targets(req.agent_id_list, req.hosts, "", max_hosts)?,
    })
}

/// One operation, found at `path` ("" for a whole body).
fn operation(op: ProcOperation, path: &str, max_hosts: usize) -> Result<OpRequest, ApiError> {
    let at = |name: &str| join(path, name);
    let meta = op
        .meta
        .ok_or_else(|| ApiError::MissingField { field: at("meta") })?;
    let meta_path = at("meta");
    let namespace = checked_name(meta.namespace, &meta_path, "namespace")?;
    let name = checked_name(meta.name, &meta_path, "name")?;
    let labels = labels(meta.labels, &meta_path)?;
    let op_type =
        small_uint(op.op_type, path, "op_type")?.ok_or_else(|| ApiError::MissingField {
            field: at("op_type"),
        })?;
    let spec = match op.spec {
        Some(s) => spec(s, &at("spec"))?,
        None => ProcSpec::default(),
    };
    Ok(OpRequest {
        namespace,
        name,
        labels,
        op_type,
        targets: targets(op.agent_id_list, op.hosts, path, max_hosts)?,
        spec,
    })
}

/// `agent_id_list` (v2) or else `hosts` (v1), at least one.
fn targets(
    agent_id_list: Option<Vec<String>>,
    hosts: Option<Value>,
    path: &str,
    max: usize,
) -> Result<Vec<(String, AgentRef)>, ApiError> {
    let field = |n: &str| join(path, n);
    let too_many = |name: &'static str, count: usize| {
        if count > max {
            Err(ApiError::TooManyEntries {
                field: name,
                count,
                limit: max,
            })
        } else {
            Ok(())
        }
    };
    let mut out = Vec::new();
    if let Some(ids) = agent_id_list {
        too_many("agent_id_list", ids.len())?;
        for (i, raw) in ids.into_iter().enumerate() {
            let agent = AgentRef::parse(&raw).map_err(|source| ApiError::BadAgentId {
                field: format!("{}[{i}]", field("agent_id_list")),
                source,
            })?;
            out.push((raw, agent));
        }
    } else if let Some(hosts) = hosts {
        // Counted before any entry is read.
        too_many("hosts", hosts.as_array().map_or(0, Vec::len))?;
        let hosts: Vec<ProcHost> = typed_at(hosts, &field("hosts"))?;
        for (i, h) in hosts.into_iter().enumerate() {
            let p = format!("{}[{i}]", field("hosts"));
            let ip_str = h.ip.ok_or_else(|| ApiError::MissingField {
                field: format!("{p}.ip"),
            })?;
            let ip = ip_str.trim().parse().map_err(|_| ApiError::BadIp {
                field: format!("{p}.ip"),
                value: quoted(&ip_str),
            })?;
            let cloud = cloud_id(h.bk_cloud_id, &p)?;
            out.push((
                format!("{cloud}:{}", ip_str.trim()),
                AgentRef::Key(AgentKey::new(cloud, ip)),
            ));
        }
    }
    if out.is_empty() {
        return Err(invalid(
            field("agent_id_list"),
            "no agents: send agent_id_list (or hosts [{ip, bk_cloud_id}]) with at least one entry",
        ));
    }
    Ok(out)
}

/// `value`, found at `path`, read as `T`; an error names the field path
/// from the body's root (`proc_operate_req[1].hosts[0].bk_cloud_id`).
fn typed_at<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, ApiError> {
    #[derive(Deserialize)]
    struct At<T> {
        at: T,
    }
    let fields = Fields::from_iter([("at".to_string(), value)]);
    let reroot = |f: String| match f.strip_prefix("at") {
        Some(rest) => format!("{path}{rest}"),
        None => f,
    };
    typed::<At<T>>(&fields).map(|a| a.at).map_err(|e| match e {
        ApiError::MissingField { field } => ApiError::MissingField {
            field: reroot(field),
        },
        ApiError::Invalid { field, problem } => ApiError::Invalid {
            field: reroot(field),
            problem,
        },
        other => other,
    })
}

/// An optional integer >= 0 that fits 32 bits, named `path.name`.
fn small_uint(n: Option<Number>, path: &str, name: &str) -> Result<Option<u32>, ApiError> {
    let Some(n) = n else { return Ok(None) };
    let Some(v) = n.as_u64() else {
        return Err(invalid(
            join(path, name),
            format!("{} is not an integer >= 0", quoted(&n.to_string())),
        ));
    };
    u32::try_from(v)
        .map(Some)
        .map_err(|_| invalid(join(path, name), "is too large"))
}

/// `spec.identity`, `spec.control`, `spec.resource`,
/// `spec.alive_monitor_policy`; missing parts are empty.
fn spec(s: ProcOperationSpec, path: &str) -> Result<ProcSpec, ApiError> {
    let identity_path = join(path, "identity");
    let control_path = join(path, "control");
    let resource_path = join(path, "resource");
    let policy_path = join(path, "alive_monitor_policy");
    let identity = s.identity.unwrap_or_default();
    let control = s.control.unwrap_or_default();
    let resource = s.resource.unwrap_or_default();
    let policy = s.alive_monitor_policy.unwrap_or_default();
    let id = |v: Option<String>, n: &str| {
        Ok::<_, ApiError>(text(v, &identity_path, n)?.unwrap_or_default())
    };
    let ctl = |v: Option<String>, n: &str| {
        Ok::<_, ApiError>(text(v, &control_path, n)?.unwrap_or_default())
    };
    let secs = |v: Option<Number>, n: &str| {
        Ok::<_, ApiError>(small_uint(v, &policy_path, n)?.unwrap_or(0))
    };
    Ok(ProcSpec {
        index_key: id(identity.index_key, "index_key")?,
        proc_name: id(identity.proc_name, "proc_name")?,
        setup_path: id(identity.setup_path, "setup_path")?,
        pid_path: id(identity.pid_path, "pid_path")?,
        user: id(identity.user, "user")?,
        config_path: id(identity.config_path, "config_path")?,
        log_path: id(identity.log_path, "log_path")?,
        start_cmd: ctl(control.start_cmd, "start_cmd")?,
        stop_cmd: ctl(control.stop_cmd, "stop_cmd")?,
        restart_cmd: ctl(control.restart_cmd, "restart_cmd")?,
        reload_cmd: ctl(control.reload_cmd, "reload_cmd")?,
        kill_cmd: ctl(control.kill_cmd, "kill_cmd")?,
        version_cmd: ctl(control.version_cmd, "version_cmd")?,
        health_cmd: ctl(control.health_cmd, "health_cmd")?,
        cpu_limit_percent: percent(resource.cpu, &resource_path, "cpu")?,
        mem_limit_percent: percent(resource.mem, &resource_path, "mem")?,
        auto_type: secs(policy.auto_type, "auto_type")?,
        start_check_secs: secs(policy.start_check_secs, "start_check_secs")?,
        stop_check_secs: secs(policy.stop_check_secs, "stop_check_secs")?,
        start_retries: secs(policy.start_retries, "start_retries")?,
        start_interval_secs: secs(policy.start_interval, "start_interval")?,
        op_timeout_secs: secs(policy.op_timeout, "op_timeout")?,
    })
}

/// A percent: a number or a numeric string, 0..=100; absent is 0.
fn percent(v: Option<Value>, path: &str, name: &str) -> Result<f64, ApiError> {
    let v = match v {
        None | Some(Value::Null) => return Ok(0.0),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    match v {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(invalid(
            join(path, name),
            "must be a percent between 0 and 100",
        )),
    }
}

/// `meta.labels`: string values kept, numbers and booleans as text.
fn labels(
    labels: Option<Map<String, Value>>,
    path: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(obj) = labels else {
        return Ok(BTreeMap::new());
    };
    if obj.len() > MAX_LABELS {
        return Err(invalid(
            join(path, "labels"),
            format!("has over {MAX_LABELS} entries"),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let text = match v {
            Value::String(s) => s,
            Value::Number(_) | Value::Bool(_) => v.to_string(),
            _ => continue,
        };
        if k.len() > 128 || text.len() > MAX_TEXT {
            return Err(invalid(
                join(path, "labels"),
                format!("label {} is too long", quoted(&k)),
            ));
        }
        out.insert(k, text);
    }
    Ok(out)
}

/// A required namespace or name: `[A-Za-z0-9._-]`, 1 to 128 bytes (it
/// names files on the agent).
fn checked_name(v: Option<String>, path: &str, name: &str) -> Result<String, ApiError> {
    let v = text(v, path, name)?.ok_or_else(|| ApiError::MissingField {
        field: join(path, name),
    })?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid(
            join(path, name),
            format!(
                "{} must be 1 to 128 characters of [A-Za-z0-9._-]",
                quoted(&v)
            ),
        ));
    }
    Ok(v)
}

/// An optional string, at most [`MAX_TEXT`] bytes.
fn text(v: Option<String>, path: &str, name: &str) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.len() > MAX_TEXT => Err(invalid(
            join(path, name),
            format!("is over {MAX_TEXT} bytes"),
        )),
        v => Ok(v),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    fn nodeman_op() -> Value {
        json!({
            "meta": {"namespace": "nodeman", "name": "bkmonitorbeat", "labels": {"proc_name": "bkmonitorbeat"}},
            "op_type": 0,
            "agent_id_list": ["0:10.0.0.1", "020000000052540033333333"],
            "nodeman_spec": {"process_name": "x"},
            "spec": {
                "identity": {"index_key": "", "proc_name": "bkmonitorbeat", "setup_path": "/usr/local/gse/plugins/bin",
                             "pid_path": "/var/run/gse/bkmonitorbeat.pid", "user": "root"},
                "control": {"start_cmd": "./start.sh bkmonitorbeat", "stop_cmd": "./stop.sh bkmonitorbeat",
                            "restart_cmd": "./restart.sh bkmonitorbeat", "reload_cmd": "./reload.sh bkmonitorbeat",
                            "kill_cmd": "", "version_cmd": "./bkmonitorbeat -v", "health_cmd": ""},
                "resource": {"cpu": 10, "mem": "10"},
                "alive_monitor_policy": {"auto_type": 1, "start_check_secs": 9, "start_retries": 4, "start_interval": 10}
            }
        })
    }

    #[test]
    fn a_nodeman_operation_is_read_field_for_field() {
        let ops = operate_multi(&fields(json!({"proc_operate_req": [nodeman_op()]})), 100).unwrap();
        let op = &ops[0];
        assert_eq!(
            (op.namespace.as_str(), op.name.as_str(), op.op_type),
            ("nodeman", "bkmonitorbeat", 0)
        );
        assert_eq!(op.labels["proc_name"], "bkmonitorbeat");
        assert_eq!(op.targets.len(), 2);
        assert_eq!(op.targets[1].0, "020000000052540033333333");
        assert_eq!(op.spec.setup_path, "/usr/local/gse/plugins/bin");
        assert_eq!(op.spec.start_cmd, "./start.sh bkmonitorbeat");
        assert_eq!(
            (op.spec.cpu_limit_percent, op.spec.mem_limit_percent),
            (10.0, 10.0)
        );
        assert_eq!(
            (
                op.spec.start_check_secs,
                op.spec.start_retries,
                op.spec.start_interval_secs
            ),
            (9, 4, 10)
        );
    }

    #[test]
    fn v1_hosts_become_cloud_ip_names() {
        let mut op = nodeman_op();
        op.as_object_mut().unwrap().remove("agent_id_list");
        op["hosts"] = json!([{"ip": "10.0.0.7", "bk_cloud_id": 2}]);
        let ops = operate_one(&fields(op.clone()), 100).unwrap();
        assert_eq!(ops[0].targets[0].0, "2:10.0.0.7");
        // A cloud id in a string is refused, naming the field.
        op["hosts"] = json!([{"ip": "10.0.0.7", "bk_cloud_id": "2"}]);
        let e = operate_one(&fields(op), 100).unwrap_err();
        assert_eq!(e.code(), 1000400);
        let text = e.to_string();
        assert!(
            text.starts_with("hosts[0].bk_cloud_id: ") && text.contains("expected an integer"),
            "{e}"
        );
    }

    #[test]
    fn hosts_are_not_read_when_agent_id_list_is_sent() {
        let mut op = nodeman_op();
        op["hosts"] = json!("whatever");
        let ops = operate_one(&fields(op.clone()), 100).unwrap();
        assert_eq!(ops[0].targets.len(), 2);
        // With agent_id_list null, hosts are read, and a bad one is named
        // from the body's root.
        op["agent_id_list"] = Value::Null;
        op["hosts"] =
            json!([{"ip": "10.0.0.7", "bk_cloud_id": 1}, {"ip": "10.0.0.8", "bk_cloud_id": "1"}]);
        let e = operate_multi(
            &fields(json!({"proc_operate_req": [nodeman_op(), op.clone()]})),
            100,
        )
        .unwrap_err();
        assert_eq!(e.code(), 1000400);
        assert!(
            e.to_string()
                .starts_with("proc_operate_req[1].hosts[1].bk_cloud_id: "),
            "{e}"
        );
        op["hosts"] = json!([{"ip": "10.0.0.8"}]);
        let e = operate_one(&fields(op.clone()), 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hosts[0].bk_cloud_id: missing; this field is required"
        );
        op["hosts"] = json!([{"ip": "10.0.0.8", "bk_cloud_id": -1}]);
        let e = operate_one(&fields(op.clone()), 100).unwrap_err();
        assert!(
            matches!(e, ApiError::BadCloudId { ref field, .. } if field == "hosts[0].bk_cloud_id"),
            "{e}"
        );
        op["hosts"] = Value::Array(vec![json!({"ip": "10.0.0.8", "bk_cloud_id": 0}); 4]);
        let e = operate_one(&fields(op), 3).unwrap_err();
        assert_eq!(e.code(), 1000413);
    }

    #[test]
    fn numbers_null_and_bounds_read_as_before() {
        let read = |f: &dyn Fn(&mut Value)| {
            let mut op = nodeman_op();
            f(&mut op);
            operate_one(&fields(op), 100)
        };
        // Null counts as absent: an empty spec part, a zero limit.
        let ops = read(&|op| {
            op["spec"]["control"] = Value::Null;
            op["spec"]["resource"]["cpu"] = Value::Null;
            op["meta"]["labels"] = Value::Null;
        })
        .unwrap();
        assert_eq!(
            (
                ops[0].spec.start_cmd.as_str(),
                ops[0].spec.cpu_limit_percent
            ),
            ("", 0.0)
        );
        assert!(ops[0].labels.is_empty());
        // Labels: numbers and booleans as text, other values dropped.
        let ops =
            read(&|op| op["meta"]["labels"] = json!({"a": 1, "b": true, "c": [1], "d": null}))
                .unwrap();
        assert_eq!(ops[0].labels.len(), 2);
        assert_eq!(
            (ops[0].labels["a"].as_str(), ops[0].labels["b"].as_str()),
            ("1", "true")
        );
        let fails = |f: &dyn Fn(&mut Value)| read(f).unwrap_err().to_string();
        let e = fails(&|op| op["op_type"] = json!("0"));
        assert!(e.starts_with("op_type: ") && e.contains("integer"), "{e}");
        assert_eq!(
            fails(&|op| op["op_type"] = Value::Null),
            "op_type: missing; this field is required"
        );
        assert_eq!(
            fails(&|op| op["op_type"] = json!(-1)),
            "op_type: -1 is not an integer >= 0"
        );
        assert_eq!(
            fails(&|op| op["op_type"] = json!(1.5)),
            "op_type: 1.5 is not an integer >= 0"
        );
        assert_eq!(
            fails(&|op| op["op_type"] = json!(5_000_000_000u64)),
            "op_type: is too large"
        );
        assert_eq!(
            fails(&|op| op["spec"]["alive_monitor_policy"]["op_timeout"] = json!(5_000_000_000u64)),
            "spec.alive_monitor_policy.op_timeout: is too large"
        );
        assert_eq!(
            fails(&|op| op["spec"]["resource"]["mem"] = json!(true)),
            "spec.resource.mem: must be a percent between 0 and 100"
        );
        assert_eq!(
            fails(&|op| op["meta"] = Value::Null),
            "meta: missing; this field is required"
        );
        assert_eq!(
            fails(&|op| op["meta"]["namespace"] = Value::Null),
            "meta.namespace: missing; this field is required"
        );
        let e = fails(&|op| op["meta"]["name"] = json!(3));
        assert!(e.starts_with("meta.name: "), "{e}");
        let e = fails(&|op| op["spec"]["identity"]["user"] = json!("u".repeat(MAX_TEXT + 1)));
        assert_eq!(e, "spec.identity.user: is over 4096 bytes");
        let e = fails(&|op| op["agent_id_list"] = json!(["not an agent"]));
        assert!(e.starts_with("agent_id_list[0]: "), "{e}");
    }

    #[test]
    fn task_id_is_one_to_256_characters() {
        assert_eq!(task_id(&fields(json!({"task_id": "P:1"}))).unwrap(), "P:1");
        for (body, text) in [
            (json!({}), "task_id: missing; this field is required"),
            (
                json!({"task_id": null}),
                "task_id: missing; this field is required",
            ),
            (
                json!({"task_id": ""}),
                "task_id: must be 1 to 256 characters",
            ),
        ] {
            assert_eq!(task_id(&fields(body)).unwrap_err().to_string(), text);
        }
        let e = task_id(&fields(json!({"task_id": 5}))).unwrap_err();
        assert_eq!(e.code(), 1000400);
        assert!(e.to_string().starts_with("task_id: "), "{e}");
    }

    #[test]
    fn bad_input_names_the_field() {
        let code_and_text = |v: Value| {
            let e = operate_multi(&fields(v), 100).unwrap_err();
            (e.code(), e.to_string())
        };
        let mut op = nodeman_op();
        op["meta"]["name"] = json!("../etc");
        let (code, text) = code_and_text(json!({"proc_operate_req": [op]}));
        assert_eq!(code, 1000400);
        assert!(text.contains("proc_operate_req[0].meta.name"), "{text}");
        let mut op = nodeman_op();
        op["agent_id_list"] = json!([]);
        let (_, text) = code_and_text(json!({"proc_operate_req": [op]}));
        assert!(text.contains("no agents"), "{text}");
        let mut op = nodeman_op();
        op["spec"]["resource"]["cpu"] = json!(300);
        let (_, text) = code_and_text(json!({"proc_operate_req": [op]}));
        assert!(text.contains("spec.resource.cpu"), "{text}");
        let e = operate_multi(
            &fields(json!({"proc_operate_req": [nodeman_op(), nodeman_op()]})),
            3,
        )
        .unwrap_err();
        assert_eq!(e.code(), 1000413);
    }

    #[test]
    fn status_query_takes_meta_or_a_top_level_namespace() {
        let q = status_query(
            &fields(json!({"meta": {"namespace": "nodeman", "name": "beat", "labels": {"proc_name": "beat"}},
                           "agent_id_list": ["0:10.0.0.1"]})),
            10,
        )
        .unwrap();
        assert_eq!(
            (q.namespace.as_str(), q.name.as_str(), q.agents.len()),
            ("nodeman", "beat", 1)
        );
        let q = status_query(
            &fields(json!({"namespace": "nodeman", "meta": {"name": "beat"}, "hosts": [{"ip": "10.0.0.1", "bk_cloud_id": 0}]})),
            10,
        )
        .unwrap();
        assert_eq!(q.namespace, "nodeman");
        let e = status_query(&fields(json!({"agent_id_list": ["0:10.0.0.1"]})), 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "meta.namespace: missing; this field is required"
        );
        // meta.namespace wins; labels are not read.
        let q = status_query(
            &fields(json!({"namespace": "other", "meta": {"namespace": "nodeman", "name": "beat", "labels": 7},
                           "agent_id_list": ["0:10.0.0.1"]})),
            10,
        )
        .unwrap();
        assert_eq!(q.namespace, "nodeman");
        let e = status_query(
            &fields(json!({"meta": {"namespace": "nodeman"}, "agent_id_list": ["0:10.0.0.1"]})),
            10,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "meta.name: missing; this field is required");
        let e = status_query(
            &fields(json!({"meta": {"namespace": "nodeman", "name": "beat"}, "agent_id_list": vec!["0:10.0.0.1"; 11]})),
            10,
        )
        .unwrap_err();
        assert_eq!(e.code(), 1000413);
    }
}

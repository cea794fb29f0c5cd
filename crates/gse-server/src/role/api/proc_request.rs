//! Reading the process-operation requests (COMPAT §2.2, §4.3) into the
//! proc role's types, checking every bound and naming the field that
//! breaks one.
//!
//! An operation is `{meta:{namespace, name, labels?}, op_type,
//! agent_id_list | hosts:[{ip, bk_cloud_id}], spec:{identity, control,
//! resource, alive_monitor_policy}}`; `nodeman_spec` and anything else
//! unknown is ignored. Unknown op types are accepted here and answered
//! 832 per entry, as GSE does.

use std::collections::BTreeMap;

use gse_core::{AgentKey, AgentRef};
use gse_proto::link::ProcSpec;
use serde_json::{Map, Value};

use super::body::{Fields, bounded_array, entry_cloud_id, entry_opt_u64, entry_str};
use super::error::{ApiError, json_type, quoted};
use crate::role::proc::OpRequest;

/// Longest namespace, name, label or spec string taken.
const MAX_TEXT: usize = 4096;
/// Most labels per operation.
const MAX_LABELS: usize = 32;

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `operate_proc_multi`: every operation of `proc_operate_req`. The total
/// of (operation, agent) pairs is bounded by `max_hosts`.
pub fn operate_multi(body: &Fields, max_hosts: usize) -> Result<Vec<OpRequest>, ApiError> {
    let items = bounded_array(body, "proc_operate_req", max_hosts)?;
    if items.is_empty() {
        return Err(invalid(
            "proc_operate_req",
            "is empty; send at least one operation",
        ));
    }
    let mut ops = Vec::with_capacity(items.len());
    let mut pairs = 0;
    for (i, item) in items.iter().enumerate() {
        let path = format!("proc_operate_req[{i}]");
        let obj = item.as_object().ok_or_else(|| ApiError::WrongType {
            field: path.clone(),
            expected: "an object",
            got: json_type(item),
        })?;
        let op = operation(obj, &path, max_hosts)?;
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
    Ok(vec![operation(body, "", max_hosts)?])
}

/// `{task_id}`.
pub fn task_id(body: &Fields) -> Result<String, ApiError> {
    let v = Value::Object(body.clone());
    let id = entry_str(&v, "", "task_id").map_err(unprefix)?;
    if id.is_empty() || id.len() > 256 {
        return Err(invalid("task_id", "must be 1 to 256 characters"));
    }
    Ok(id.to_string())
}

/// `get_proc_status_v2`: the plugin's namespace and name, and the agents.
pub struct StatusQuery {
    pub namespace: String,
    pub name: String,
    pub agents: Vec<(String, AgentRef)>,
}

pub fn status_query(body: &Fields, max_hosts: usize) -> Result<StatusQuery, ApiError> {
    let meta = object(body, "", "meta")?;
    let empty = Map::new();
    let meta_map = meta.unwrap_or(&empty);
    // bk-monitor's older calls send `namespace` beside `meta`.
    let namespace = text(meta_map, "meta", "namespace")?
        .or(text(body, "", "namespace")?)
        .ok_or_else(|| ApiError::MissingField {
            field: "meta.namespace".into(),
        })?;
    let name = text(meta_map, "meta", "name")?.ok_or_else(|| ApiError::MissingField {
        field: "meta.name".into(),
    })?;
    Ok(StatusQuery {
        namespace,
        name,
        agents: targets(body, "", max_hosts)?,
    })
}

/// One operation object at `path` ("" for a whole body).
fn operation(
    obj: &Map<String, Value>,
    path: &str,
    max_hosts: usize,
) -> Result<OpRequest, ApiError> {
    let at = |name: &str| join(path, name);
    let meta =
        object(obj, path, "meta")?.ok_or_else(|| ApiError::MissingField { field: at("meta") })?;
    let namespace = checked_name(meta, &at("meta"), "namespace")?;
    let name = checked_name(meta, &at("meta"), "name")?;
    let labels = labels(meta, &at("meta"))?;
    let op_value = Value::Object(obj.clone());
    let op_type =
        entry_opt_u64(&op_value, path, "op_type")?.ok_or_else(|| ApiError::MissingField {
            field: at("op_type"),
        })?;
    let op_type = u32::try_from(op_type).map_err(|_| invalid(at("op_type"), "is too large"))?;
    let spec = match object(obj, path, "spec")? {
        Some(s) => spec(s, &at("spec"))?,
        None => ProcSpec::default(),
    };
    Ok(OpRequest {
        namespace,
        name,
        labels,
        op_type,
        targets: targets(obj, path, max_hosts)?,
        spec,
    })
}

/// `agent_id_list` (v2) or `hosts` (v1), at least one.
fn targets(
    obj: &Map<String, Value>,
    path: &str,
    max: usize,
) -> Result<Vec<(String, AgentRef)>, ApiError> {
    let field = |n: &str| join(path, n);
    let list = |name: &'static str| -> Result<Option<&Vec<Value>>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) if a.len() > max => Err(ApiError::TooManyEntries {
                field: name,
                count: a.len(),
                limit: max,
            }),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(ApiError::WrongType {
                field: field(name),
                expected: "an array",
                got: json_type(other),
            }),
        }
    };
    let mut out = Vec::new();
    if let Some(ids) = list("agent_id_list")? {
        for (i, v) in ids.iter().enumerate() {
            let f = format!("{}[{i}]", field("agent_id_list"));
            let raw = v.as_str().ok_or_else(|| ApiError::WrongType {
                field: f.clone(),
                expected: "a string",
                got: json_type(v),
            })?;
            let agent =
                AgentRef::parse(raw).map_err(|source| ApiError::BadAgentId { field: f, source })?;
            out.push((raw.to_string(), agent));
        }
    } else if let Some(hosts) = list("hosts")? {
        for (i, h) in hosts.iter().enumerate() {
            let p = format!("{}[{i}]", field("hosts"));
            let ip_str = entry_str(h, &p, "ip")?;
            let ip = ip_str.trim().parse().map_err(|_| ApiError::BadIp {
                field: format!("{p}.ip"),
                value: quoted(ip_str),
            })?;
            let cloud = entry_cloud_id(h, &p)?;
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

/// `spec.identity`, `spec.control`, `spec.resource`,
/// `spec.alive_monitor_policy`; missing parts are empty.
fn spec(s: &Map<String, Value>, path: &str) -> Result<ProcSpec, ApiError> {
    let empty = Map::new();
    let identity_path = join(path, "identity");
    let control_path = join(path, "control");
    let resource_path = join(path, "resource");
    let policy_path = join(path, "alive_monitor_policy");
    let identity = object(s, path, "identity")?.unwrap_or(&empty);
    let control = object(s, path, "control")?.unwrap_or(&empty);
    let resource = object(s, path, "resource")?.unwrap_or(&empty);
    let policy = object(s, path, "alive_monitor_policy")?.unwrap_or(&empty);
    let id = |n: &str| Ok::<_, ApiError>(text(identity, &identity_path, n)?.unwrap_or_default());
    let ctl = |n: &str| Ok::<_, ApiError>(text(control, &control_path, n)?.unwrap_or_default());
    let secs = |n: &str| -> Result<u32, ApiError> {
        let v = entry_opt_u64(&Value::Object(policy.clone()), &policy_path, n)?.unwrap_or(0);
        u32::try_from(v).map_err(|_| invalid(join(&policy_path, n), "is too large"))
    };
    Ok(ProcSpec {
        index_key: id("index_key")?,
        proc_name: id("proc_name")?,
        setup_path: id("setup_path")?,
        pid_path: id("pid_path")?,
        user: id("user")?,
        config_path: id("config_path")?,
        log_path: id("log_path")?,
        start_cmd: ctl("start_cmd")?,
        stop_cmd: ctl("stop_cmd")?,
        restart_cmd: ctl("restart_cmd")?,
        reload_cmd: ctl("reload_cmd")?,
        kill_cmd: ctl("kill_cmd")?,
        version_cmd: ctl("version_cmd")?,
        health_cmd: ctl("health_cmd")?,
        cpu_limit_percent: percent(resource, &resource_path, "cpu")?,
        mem_limit_percent: percent(resource, &resource_path, "mem")?,
        auto_type: secs("auto_type")?,
        start_check_secs: secs("start_check_secs")?,
        stop_check_secs: secs("stop_check_secs")?,
        start_retries: secs("start_retries")?,
        start_interval_secs: secs("start_interval")?,
        op_timeout_secs: secs("op_timeout")?,
    })
}

/// A percent: a number or a numeric string, 0..=100.
fn percent(obj: &Map<String, Value>, path: &str, name: &str) -> Result<f64, ApiError> {
    let v = match obj.get(name) {
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
fn labels(meta: &Map<String, Value>, path: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(obj) = object(meta, path, "labels")? else {
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
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => v.to_string(),
            _ => continue,
        };
        if k.len() > 128 || text.len() > MAX_TEXT {
            return Err(invalid(
                join(path, "labels"),
                format!("label {} is too long", quoted(k)),
            ));
        }
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// A required namespace or name: `[A-Za-z0-9._-]`, 1 to 128 bytes (it
/// names files on the agent).
fn checked_name(obj: &Map<String, Value>, path: &str, name: &str) -> Result<String, ApiError> {
    let v = text(obj, path, name)?.ok_or_else(|| ApiError::MissingField {
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

/// An optional string field, bounded.
fn text(obj: &Map<String, Value>, path: &str, name: &str) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_TEXT => Err(invalid(
            join(path, name),
            format!("is over {MAX_TEXT} bytes"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::WrongType {
            field: join(path, name),
            expected: "a string",
            got: json_type(other),
        }),
    }
}

/// An optional object field.
fn object<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(ApiError::WrongType {
            field: join(path, name),
            expected: "an object",
            got: json_type(other),
        }),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `entry_str` with an empty path names the field ".x"; drop the dot.
fn unprefix(e: ApiError) -> ApiError {
    match e {
        ApiError::MissingField { field } => ApiError::MissingField {
            field: field.trim_start_matches('.').to_string(),
        },
        ApiError::WrongType {
            field,
            expected,
            got,
        } => ApiError::WrongType {
            field: field.trim_start_matches('.').to_string(),
            expected,
            got,
        },
        other => other,
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
        assert!(
            e.to_string()
                .contains("hosts[0].bk_cloud_id: expected an integer"),
            "{e}"
        );
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
        assert!(status_query(&fields(json!({"agent_id_list": ["0:10.0.0.1"]})), 10).is_err());
    }
}

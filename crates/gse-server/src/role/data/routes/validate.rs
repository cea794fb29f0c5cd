//! Reading data-route request parts (COMPAT.md §2.3) into the model, every
//! field checked and bounded, every error naming its field
//! (`route[2].stream_to.stream_to_id`). Unknown fields are ignored; the
//! parts callers compare later are kept as sent.
//!
//! Checks that need stored state (does the stream_to exist, does the route
//! carry its mode's section) are in [`check_route`], called by the service.

use serde_json::{Map, Value};

use super::error::RouteError;
use super::model::{ReportMode, Route, StreamFilter, StreamTo};

/// Longest name (route, stream_to, filter, plat_name, operator).
pub const MAX_NAME_CHARS: usize = 128;
/// Most routes in one channel, and in one request.
pub const MAX_ROUTES: usize = 64;
/// Most stream filters in one channel, and in one request.
pub const MAX_FILTERS: usize = 64;
/// Most `storage_address` entries of a stream_to.
pub const MAX_ADDRESSES: usize = 64;
/// Largest `label`, `stream_to` or filter object, as JSON bytes.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Largest channel id (libgse sends the data id as an i32 and refuses <= 0).
pub const MAX_CHANNEL_ID: u32 = i32::MAX as u32;
/// Longest `data_log_path`, in bytes (Linux's PATH_MAX).
pub const MAX_DATA_LOG_PATH_BYTES: usize = 4096;

type Result<T> = std::result::Result<T, RouteError>;

/// What a stream_to request part holds (`add_streamto.stream_to`,
/// `update_streamto.specification.stream_to`).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamToSpec {
    pub name: String,
    pub report_mode: ReportMode,
    /// As sent, without `stream_to_id`.
    pub body: Value,
}

/// `delete_route`'s `operation.method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteMethod {
    /// The whole channel.
    All,
    /// Only the routes and filters named in `specification`.
    Specification,
}

fn type_name(v: &Value) -> &'static str {
    crate::role::api::error::json_type(v)
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_string()
    } else {
        format!("{field}.{name}")
    }
}

/// A required object.
pub fn object<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Err(RouteError::invalid(
            field,
            "missing; this field is required",
        )),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(RouteError::invalid(
            field,
            format!("expected an object, got {}", type_name(other)),
        )),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, field: &str, name: &str) -> Result<Option<&'a str>> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(RouteError::invalid(
            join(field, name),
            format!("expected a string, got {}", type_name(other)),
        )),
    }
}

/// A required name: non-empty, at most [`MAX_NAME_CHARS`], no control
/// characters.
pub fn name(m: &Map<String, Value>, field: &str, key: &str) -> Result<String> {
    let full = join(field, key);
    let s = opt_str(m, field, key)?
        .ok_or_else(|| RouteError::invalid(&full, "missing; this field is required"))?;
    if s.is_empty() || s.chars().count() > MAX_NAME_CHARS || s.chars().any(char::is_control) {
        return Err(RouteError::invalid(
            full,
            format!("must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(s.to_string())
}

/// An optional id: an integer (a number in a string is refused: the
/// clients' schemas say int); 0 and null count as absent (Go clients send
/// their zero value).
pub fn opt_id(m: &Map<String, Value>, field: &str, key: &str, max: u32) -> Result<Option<u32>> {
    let bad = |v: &Value| {
        RouteError::invalid(
            join(field, key),
            format!(
                "{} is not an id between 1 and {max}",
                crate::role::api::error::quoted(&v.to_string())
            ),
        )
    };
    let v = match m.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let n = match v {
        Value::Number(n) => n.as_u64(),
        other => {
            let got = crate::role::api::error::json_type(other);
            let problem = format!("expected an integer between 1 and {max}, got {got}");
            return Err(RouteError::invalid(join(field, key), problem));
        }
    };
    match n {
        Some(0) => Ok(None),
        Some(n) if n <= u64::from(max) => Ok(Some(n as u32)),
        _ => Err(bad(v)),
    }
}

/// A required id (see [`opt_id`]).
pub fn id(m: &Map<String, Value>, field: &str, key: &str, max: u32) -> Result<u32> {
    opt_id(m, field, key, max)?
        .ok_or_else(|| RouteError::invalid(join(field, key), "missing; this field is required"))
}

/// `operation.operator_name`, required by every call.
pub fn operator(body: &Map<String, Value>) -> Result<String> {
    let op = object(body.get("operation"), "operation")?;
    name(op, "operation", "operator_name")
}

/// `operation.method` of delete_route (default `all`).
pub fn delete_method(body: &Map<String, Value>) -> Result<DeleteMethod> {
    let op = object(body.get("operation"), "operation")?;
    match opt_str(op, "operation", "method")? {
        None | Some("all") => Ok(DeleteMethod::All),
        Some("specification") => Ok(DeleteMethod::Specification),
        Some(other) => Err(RouteError::invalid(
            "operation.method",
            format!(
                "{:?} is not a method; use all or specification",
                crate::role::api::error::quoted(other)
            ),
        )),
    }
}

fn bounded(v: &Value, field: &str) -> Result<()> {
    let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if size > MAX_OBJECT_BYTES {
        return Err(RouteError::invalid(
            field,
            format!("is {size} bytes of JSON, over the limit of {MAX_OBJECT_BYTES}"),
        ));
    }
    Ok(())
}

/// An optional label: an object (bk-monitor-worker decodes it as one) or a
/// string, bounded.
pub fn label(m: &Map<String, Value>, field: &str) -> Result<Option<Value>> {
    let full = join(field, "label");
    match m.get("label") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::Object(_) | Value::String(_))) => {
            bounded(v, &full)?;
            Ok(Some(v.clone()))
        }
        Some(other) => Err(RouteError::invalid(
            full,
            format!("expected an object, got {}", type_name(other)),
        )),
    }
}

/// A required array of at most `limit` entries; null or absent is empty
/// when `required` is false.
pub fn array<'a>(
    m: &'a Map<String, Value>,
    field: &str,
    key: &str,
    limit: usize,
) -> Result<&'a [Value]> {
    let full = join(field, key);
    match m.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) if items.len() > limit => Err(RouteError::OverLimit {
            field: full,
            count: items.len(),
            limit,
        }),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(RouteError::invalid(
            full,
            format!("expected an array, got {}", type_name(other)),
        )),
    }
}

/// A stream_to request part.
pub fn stream_to(v: Option<&Value>, field: &str) -> Result<StreamToSpec> {
    let m = object(v, field)?;
    let name = name(m, field, "name")?;
    let mode_field = join(field, "report_mode");
    let mode = opt_str(m, field, "report_mode")?
        .ok_or_else(|| RouteError::invalid(&mode_field, "missing; this field is required"))?;
    let report_mode = ReportMode::parse(mode).ok_or_else(|| {
        RouteError::invalid(
            &mode_field,
            format!(
                "{:?} is not a report mode; use kafka, redis, pulsar or file",
                crate::role::api::error::quoted(mode)
            ),
        )
    })?;
    let mut body = Value::Object(m.clone());
    body.as_object_mut().unwrap().remove("stream_to_id");
    bounded(&body, field)?;
    match report_mode {
        ReportMode::File => {
            let path = opt_str(m, field, "data_log_path")?.unwrap_or_default();
            data_log_path(path, &join(field, "data_log_path"))?;
        }
        mode => {
            let key = mode.as_str();
            let section = object(m.get(key), &join(field, key)).map_err(|_| {
                RouteError::invalid(
                    join(field, key),
                    format!("report_mode {key} needs a {key} object with storage_address"),
                )
            })?;
            storage_addresses(section, &join(field, key))?;
        }
    }
    Ok(StreamToSpec {
        name,
        report_mode,
        body,
    })
}

/// A file stream_to's directory: not empty, at most
/// [`MAX_DATA_LOG_PATH_BYTES`], no control characters (a newline or an
/// escape sequence in a path would forge log lines and garble listings).
fn data_log_path(path: &str, field: &str) -> Result<()> {
    if path.is_empty() {
        return Err(RouteError::invalid(
            field,
            "a file stream_to needs a non-empty directory path",
        ));
    }
    if path.len() > MAX_DATA_LOG_PATH_BYTES {
        return Err(RouteError::invalid(
            field,
            format!(
                "is {} bytes; give a path of at most {MAX_DATA_LOG_PATH_BYTES} bytes",
                path.len()
            ),
        ));
    }
    if let Some((at, c)) = path.char_indices().find(|(_, c)| c.is_control()) {
        return Err(RouteError::invalid(
            field,
            format!(
                "contains the control character U+{:04X} at byte {at}; give a path of printable \
                 characters",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// `storage_address: [{ip, port}]`: at least one, each a host and a port.
pub fn storage_addresses(section: &Map<String, Value>, field: &str) -> Result<Vec<(String, u16)>> {
    let items = array(section, field, "storage_address", MAX_ADDRESSES)?;
    if items.is_empty() {
        return Err(RouteError::invalid(
            join(field, "storage_address"),
            "needs at least one {ip, port}",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let f = format!("{field}.storage_address[{i}]");
            let m = object(Some(item), &f)?;
            let host = name(m, &f, "ip")?;
            let port = opt_id(m, &f, "port", u32::from(u16::MAX))?
                .ok_or_else(|| RouteError::invalid(format!("{f}.port"), "needs a port 1-65535"))?;
            Ok((host, port as u16))
        })
        .collect()
}

fn names(m: &Map<String, Value>, field: &str, key: &str) -> Result<Vec<String>> {
    array(m, field, key, MAX_FILTERS)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS => {
                Ok(s.clone())
            }
            _ => Err(RouteError::invalid(
                format!("{}[{i}]", join(field, key)),
                "expected a filter name (a non-empty string)",
            )),
        })
        .collect()
}

/// The routes of a request (`route`, `specification.route`), structurally
/// checked; names must be unique.
pub fn routes(m: &Map<String, Value>, field: &str) -> Result<Vec<Route>> {
    let items = array(m, field, "route", MAX_ROUTES)?;
    let mut out: Vec<Route> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let f = format!("{}[{i}]", join(field, "route"));
        let r = object(Some(item), &f)?;
        let name = name(r, &f, "name")?;
        if out.iter().any(|o| o.name == name) {
            return Err(RouteError::invalid(
                format!("{f}.name"),
                format!("{name:?} appears twice; route names are unique in a channel"),
            ));
        }
        let st_field = format!("{f}.stream_to");
        let st = object(r.get("stream_to"), &st_field)?;
        let stream_to_id = id(st, &st_field, "stream_to_id", u32::MAX)?;
        let stream_to = Value::Object(st.clone());
        bounded(&stream_to, &st_field)?;
        out.push(Route {
            name,
            stream_to_id,
            stream_to,
            filter_name_and: names(r, &f, "filter_name_and")?,
            filter_name_or: names(r, &f, "filter_name_or")?,
        });
    }
    Ok(out)
}

/// Checks a route against the stream_to it names: the route carries what
/// its mode needs (a Kafka topic, a Redis channel, a Pulsar topic name).
pub fn check_route(route: &Route, stream_to: &StreamTo, field: &str) -> Result<()> {
    let mode = stream_to.report_mode;
    let key = match mode {
        ReportMode::File => return Ok(()),
        ReportMode::Kafka => "topic_name",
        ReportMode::Redis => "channel_name",
        ReportMode::Pulsar => "name",
    };
    let section = route.section(mode).and_then(Value::as_object);
    let has = |k: &str| {
        section
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    // Older GSE clients name a Redis channel by data_set + biz_id.
    if has(key) || (mode == ReportMode::Redis && has("data_set")) {
        return Ok(());
    }
    Err(RouteError::invalid(
        format!("{field}.stream_to.{}.{key}", mode.as_str()),
        format!(
            "stream_to {} is a {} stream_to, so the route needs {}.{key}",
            stream_to.stream_to_id,
            mode.as_str(),
            mode.as_str()
        ),
    ))
}

/// The stream filters of a request; names must be unique.
pub fn filters(m: &Map<String, Value>, field: &str) -> Result<Vec<StreamFilter>> {
    let items = array(m, field, "stream_filters", MAX_FILTERS)?;
    let mut out: Vec<StreamFilter> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let f = format!("{}[{i}]", join(field, "stream_filters"));
        let fm = object(Some(item), &f)?;
        let name = name(fm, &f, "name")?;
        if out.iter().any(|o| o.name == name) {
            return Err(RouteError::invalid(
                format!("{f}.name"),
                format!("{name:?} appears twice; filter names are unique in a channel"),
            ));
        }
        if let Some(t) = opt_str(fm, &f, "field_data_type")?
            && !matches!(t, "int" | "string" | "bytes")
        {
            return Err(RouteError::invalid(
                format!("{f}.field_data_type"),
                "use int, string or bytes",
            ));
        }
        if let Some(t) = opt_str(fm, &f, "field_in")?
            && !matches!(t, "protocol" | "data")
        {
            return Err(RouteError::invalid(
                format!("{f}.field_in"),
                "use protocol or data",
            ));
        }
        let body = Value::Object(fm.clone());
        bounded(&body, &f)?;
        out.push(StreamFilter { name, body });
    }
    Ok(out)
}

/// The names listed under `specification.route` / `.stream_filters` of
/// delete_route.
pub fn delete_names(m: &Map<String, Value>, field: &str, key: &str) -> Result<Vec<String>> {
    let limit = if key == "route" {
        MAX_ROUTES
    } else {
        MAX_FILTERS
    };
    array(m, field, key, limit)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            // Tolerate whole route objects: take their name.
            Value::Object(o) => name(o, &format!("{field}.{key}[{i}]"), "name"),
            other => Err(RouteError::invalid(
                format!("{field}.{key}[{i}]"),
                format!("expected a name, got {}", type_name(other)),
            )),
        })
        .collect()
}

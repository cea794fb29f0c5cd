//! The data-route request parts (COMPAT.md §2.3), typed as clients send
//! them, and their reading into the model: every field checked and
//! bounded, every error naming its field (`route[2].stream_to.stream_to_id`).
//! Unknown fields are ignored; the parts callers compare later are kept as
//! sent ([`Verbatim`]).
//!
//! Checks that need stored state (does the stream_to exist, does the route
//! carry its mode's section) are in [`check_route`], called by the service.

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use utoipa::ToSchema;

use super::error::RouteError;
use super::model::{ReportMode, Route, StreamFilter, StreamTo};
pub use crate::role::api::body::Verbatim;

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

/// `operation` of every call.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OperationPart {
    /// Who makes the change (logged; required by every call).
    pub operator_name: String,
    /// `delete_route` only: `all` (the whole channel, default) or
    /// `specification` (the routes and filters named there).
    #[serde(default)]
    pub method: Option<String>,
}

/// A `label`: an object (bk-monitor-worker decodes it as one) or a string,
/// stored and returned as sent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Object(Map<String, Value>),
    Text(String),
}

// By hand: the derive cannot describe a variant holding a free-form map.
impl utoipa::PartialSchema for Label {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
        let one_of = OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Object))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .description(Some("An object or a string, kept as sent"))
            .build();
        Schema::OneOf(one_of).into()
    }
}

impl ToSchema for Label {}

/// A stream_to as `add_streamto` and `update_streamto` send it; stored as
/// sent. Fields not named here (`kafka.sasl_username`, `redis.password`,
/// ...; docs/API.md lists what sinks read) are kept.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamToPart {
    /// The receiver's name.
    pub name: String,
    /// `kafka`, `redis`, `pulsar` or `file`.
    pub report_mode: String,
    /// `file`: the directory records are written under (in the node's
    /// data dir).
    #[serde(default)]
    pub data_log_path: Option<String>,
    /// `kafka`: the brokers and settings.
    #[serde(default)]
    pub kafka: Option<SinkSection>,
    /// `redis`: the servers (or sentinels) and settings.
    #[serde(default)]
    pub redis: Option<SinkSection>,
    /// `pulsar`: the brokers.
    #[serde(default)]
    pub pulsar: Option<SinkSection>,
}

/// The section of a stream_to's mode.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SinkSection {
    /// At least one `{ip, port}`.
    #[serde(default)]
    pub storage_address: Option<Vec<StorageAddress>>,
}

/// One server of a stream_to.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StorageAddress {
    /// Host name or address.
    pub ip: String,
    /// 1-65535.
    #[schema(value_type = u16, minimum = 1)]
    pub port: Option<Number>,
}

/// One route of `add_route` / `update_route`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RoutePart {
    /// Unique in its channel.
    pub name: String,
    /// The stream_to records go to, and this route's settings for it
    /// (`kafka.topic_name`, `redis.channel_name`, `pulsar.name`); stored as
    /// sent.
    #[schema(value_type = RouteStreamTo)]
    pub stream_to: Verbatim<RouteStreamTo>,
    /// Filters that must all match.
    #[serde(default)]
    pub filter_name_and: Option<Vec<String>>,
    /// Filters of which one must match.
    #[serde(default)]
    pub filter_name_or: Option<Vec<String>>,
}

/// A route's `stream_to`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RouteStreamTo {
    /// The stream_to's id.
    #[schema(value_type = u32, minimum = 1)]
    pub stream_to_id: Option<Number>,
    /// `{topic_name}` for a kafka stream_to.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub kafka: Option<Value>,
    /// `{channel_name}` (or `{data_set, biz_id}`) for a redis stream_to.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub redis: Option<Value>,
    /// `{name}` for a pulsar stream_to.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub pulsar: Option<Value>,
}

/// A stream filter; stored and returned as sent.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FilterPart {
    /// Unique in its channel.
    pub name: String,
    /// `int`, `string` or `bytes`.
    #[serde(default)]
    pub field_data_type: Option<String>,
    /// `protocol` or `data`.
    #[serde(default)]
    pub field_in: Option<String>,
}

/// A route or filter named for deletion: its name, or the whole object.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NamePart {
    Name(String),
    Object { name: String },
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_string()
    } else {
        format!("{field}.{name}")
    }
}

/// A name: non-empty, at most [`MAX_NAME_CHARS`], no control characters.
pub fn name(s: String, field: &str) -> Result<String> {
    if s.is_empty() || s.chars().count() > MAX_NAME_CHARS || s.chars().any(char::is_control) {
        return Err(RouteError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(s)
}

/// An optional id: an integer (a number in a string is refused by the
/// request's types: the clients' schemas say int); 0 and null count as
/// absent (Go clients send their zero value).
pub fn opt_id(value: Option<Number>, field: &str, max: u32) -> Result<Option<u32>> {
    let Some(n) = value else {
        return Ok(None);
    };
    match n.as_u64() {
        Some(0) => Ok(None),
        Some(v) if v <= u64::from(max) => Ok(Some(v as u32)),
        _ => Err(RouteError::invalid(
            field,
            format!(
                "{} is not an id between 1 and {max}",
                crate::role::api::error::quoted(&n.to_string())
            ),
        )),
    }
}

/// A required id (see [`opt_id`]).
pub fn id(value: Option<Number>, field: &str, max: u32) -> Result<u32> {
    opt_id(value, field, max)?
        .ok_or_else(|| RouteError::invalid(field, "missing; this field is required"))
}

/// `operation.operator_name`, required by every call.
pub fn operator(op: OperationPart) -> Result<String> {
    name(op.operator_name, "operation.operator_name")
}

/// `operation.method` of delete_route (default `all`).
pub fn delete_method(op: &OperationPart) -> Result<DeleteMethod> {
    match op.method.as_deref() {
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

/// An optional label, bounded; kept as sent.
pub fn label(label: Option<Label>, field: &str) -> Result<Option<Value>> {
    let full = join(field, "label");
    let value = match label {
        None => return Ok(None),
        Some(Label::Object(m)) => Value::Object(m),
        Some(Label::Text(s)) => Value::String(s),
    };
    bounded(&value, &full)?;
    Ok(Some(value))
}

/// A list of at most `limit` entries (absent is empty).
fn bounded_list<T>(items: Option<Vec<T>>, field: String, limit: usize) -> Result<Vec<T>> {
    let items = items.unwrap_or_default();
    if items.len() > limit {
        return Err(RouteError::OverLimit {
            field,
            count: items.len(),
            limit,
        });
    }
    Ok(items)
}

/// A stream_to request part.
pub fn stream_to(part: Verbatim<StreamToPart>, field: &str) -> Result<StreamToSpec> {
    let Verbatim { raw, typed } = part;
    let name = name(typed.name, &join(field, "name"))?;
    let mode_field = join(field, "report_mode");
    let report_mode = ReportMode::parse(&typed.report_mode).ok_or_else(|| {
        RouteError::invalid(
            &mode_field,
            format!(
                "{:?} is not a report mode; use kafka, redis, pulsar or file",
                crate::role::api::error::quoted(&typed.report_mode)
            ),
        )
    })?;
    let mut body = Value::Object(raw);
    body.as_object_mut().unwrap().remove("stream_to_id");
    bounded(&body, field)?;
    let section = match report_mode {
        ReportMode::File => {
            let path = typed.data_log_path.unwrap_or_default();
            data_log_path(&path, &join(field, "data_log_path"))?;
            None
        }
        ReportMode::Kafka => Some(typed.kafka),
        ReportMode::Redis => Some(typed.redis),
        ReportMode::Pulsar => Some(typed.pulsar),
    };
    if let Some(section) = section {
        let key = report_mode.as_str();
        let section = section.ok_or_else(|| {
            RouteError::invalid(
                join(field, key),
                format!("report_mode {key} needs a {key} object with storage_address"),
            )
        })?;
        storage_addresses(section, &join(field, key))?;
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
pub fn storage_addresses(section: SinkSection, field: &str) -> Result<Vec<(String, u16)>> {
    let list_field = join(field, "storage_address");
    let items = bounded_list(section.storage_address, list_field.clone(), MAX_ADDRESSES)?;
    if items.is_empty() {
        return Err(RouteError::invalid(
            list_field,
            "needs at least one {ip, port}",
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let f = format!("{list_field}[{i}]");
            let host = name(item.ip, &format!("{f}.ip"))?;
            let port = opt_id(item.port, &format!("{f}.port"), u32::from(u16::MAX))?
                .ok_or_else(|| RouteError::invalid(format!("{f}.port"), "needs a port 1-65535"))?;
            Ok((host, port as u16))
        })
        .collect()
}

/// The addresses of a stored stream_to's mode section, as sinks read them.
pub fn section_addresses(section: &Map<String, Value>, field: &str) -> Result<Vec<(String, u16)>> {
    let typed: SinkSection = serde_path_to_error::deserialize(section).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            field.to_string()
        } else {
            join(field, &path)
        };
        RouteError::invalid(at, e.into_inner().to_string())
    })?;
    storage_addresses(typed, field)
}

fn names(list: Option<Vec<String>>, field: String) -> Result<Vec<String>> {
    bounded_list(list, field.clone(), MAX_FILTERS)?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            if !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS {
                Ok(s)
            } else {
                Err(RouteError::invalid(
                    format!("{field}[{i}]"),
                    "expected a filter name (a non-empty string)",
                ))
            }
        })
        .collect()
}

/// The routes of a request (`route`, `specification.route`), structurally
/// checked; names must be unique.
pub fn routes(parts: Option<Vec<RoutePart>>, field: &str) -> Result<Vec<Route>> {
    let list = join(field, "route");
    let items = bounded_list(parts, list.clone(), MAX_ROUTES)?;
    let mut out: Vec<Route> = Vec::with_capacity(items.len());
    for (i, r) in items.into_iter().enumerate() {
        let f = format!("{list}[{i}]");
        let name = name(r.name, &format!("{f}.name"))?;
        if out.iter().any(|o| o.name == name) {
            return Err(RouteError::invalid(
                format!("{f}.name"),
                format!("{name:?} appears twice; route names are unique in a channel"),
            ));
        }
        let st_field = format!("{f}.stream_to");
        let stream_to_id = id(
            r.stream_to.typed.stream_to_id,
            &format!("{st_field}.stream_to_id"),
            u32::MAX,
        )?;
        let stream_to = Value::Object(r.stream_to.raw);
        bounded(&stream_to, &st_field)?;
        out.push(Route {
            name,
            stream_to_id,
            stream_to,
            filter_name_and: names(r.filter_name_and, format!("{f}.filter_name_and"))?,
            filter_name_or: names(r.filter_name_or, format!("{f}.filter_name_or"))?,
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
pub fn filters(parts: Option<Vec<Verbatim<FilterPart>>>, field: &str) -> Result<Vec<StreamFilter>> {
    let list = join(field, "stream_filters");
    let items = bounded_list(parts, list.clone(), MAX_FILTERS)?;
    let mut out: Vec<StreamFilter> = Vec::with_capacity(items.len());
    for (i, Verbatim { raw, typed }) in items.into_iter().enumerate() {
        let f = format!("{list}[{i}]");
        let name = name(typed.name, &format!("{f}.name"))?;
        if out.iter().any(|o| o.name == name) {
            return Err(RouteError::invalid(
                format!("{f}.name"),
                format!("{name:?} appears twice; filter names are unique in a channel"),
            ));
        }
        if let Some(t) = typed.field_data_type.as_deref()
            && !matches!(t, "int" | "string" | "bytes")
        {
            return Err(RouteError::invalid(
                format!("{f}.field_data_type"),
                "use int, string or bytes",
            ));
        }
        if let Some(t) = typed.field_in.as_deref()
            && !matches!(t, "protocol" | "data")
        {
            return Err(RouteError::invalid(
                format!("{f}.field_in"),
                "use protocol or data",
            ));
        }
        let body = Value::Object(raw);
        bounded(&body, &f)?;
        out.push(StreamFilter { name, body });
    }
    Ok(out)
}

/// The names listed under `specification.route` / `.stream_filters` of
/// delete_route.
pub fn delete_names(parts: Option<Vec<NamePart>>, field: &str, key: &str) -> Result<Vec<String>> {
    let limit = if key == "route" {
        MAX_ROUTES
    } else {
        MAX_FILTERS
    };
    let list = join(field, key);
    bounded_list(parts, list.clone(), limit)?
        .into_iter()
        .enumerate()
        .map(|(i, part)| match part {
            NamePart::Name(s) => Ok(s),
            // Tolerate whole route objects: take their name.
            NamePart::Object { name: n } => name(n, &format!("{list}[{i}].name")),
        })
        .collect()
}

//! The data-route endpoints bk-monitor, bk-log and bk-cmdb call (D5,
//! COMPAT.md §2.3): `add|update|delete|query_streamto` and
//! `add|update|delete|query_route`, under `/api/v2/data/` and the legacy
//! `/api/c/compapi/v2/gse/config_*` names.
//!
//! Each reads its body ([`validate`]) and calls the [`RouteService`]; the
//! answers are shaped as those clients read them: `{stream_to_id}`,
//! `{channel_id}`, lists for the queries, and `null` from query_route when
//! nothing matches (bk-monitor-worker's "no route" test). Every call needs
//! `operation.operator_name`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::ApiContext;
use super::body::Fields;
use super::error::ApiError;
use crate::role::data::routes::model::{Channel, StreamTo};
use crate::role::data::routes::validate::{self, DeleteMethod, MAX_CHANNEL_ID, object};
use crate::role::data::routes::{NewChannel, RouteError, RouteService};

type Result<T> = std::result::Result<T, ApiError>;

fn service(ctx: &ApiContext) -> std::result::Result<&Arc<RouteService>, RouteError> {
    ctx.routes.as_ref().ok_or(RouteError::Unavailable)
}

fn condition(body: &Fields) -> std::result::Result<&Map<String, Value>, RouteError> {
    object(body.get("condition"), "condition")
}

/// `add_streamto` -> `{stream_to_id}`.
pub async fn add_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let meta = object(body.get("metadata"), "metadata")?;
    let plat_name = validate::name(meta, "metadata", "plat_name")?;
    let label = validate::label(meta, "metadata")?;
    let spec = validate::stream_to(body.get("stream_to"), "stream_to")?;
    let id = svc.add_stream_to(plat_name, label, spec).await?;
    Ok(json!({ "stream_to_id": id }))
}

/// `update_streamto`: `condition{stream_to_id, plat_name}`,
/// `specification{stream_to}`.
pub async fn update_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let cond = condition(body)?;
    let id = validate::id(cond, "condition", "stream_to_id", u32::MAX)?;
    let plat_name = validate::name(cond, "condition", "plat_name")?;
    let spec_obj = object(body.get("specification"), "specification")?;
    let spec = validate::stream_to(spec_obj.get("stream_to"), "specification.stream_to")?;
    svc.update_stream_to(id, &plat_name, spec).await?;
    Ok(Value::Null)
}

/// `delete_streamto`: `condition{stream_to_id, plat_name}`.
pub async fn delete_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let cond = condition(body)?;
    let id = validate::id(cond, "condition", "stream_to_id", u32::MAX)?;
    let plat_name = validate::name(cond, "condition", "plat_name")?;
    svc.delete_stream_to(id, &plat_name).await?;
    Ok(Value::Null)
}

/// `query_streamto`: `condition{plat_name, stream_to_id?, label?}` -> a
/// list (empty when none) of `{stream_to_id, metadata, stream_to}`.
pub async fn query_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let cond = condition(body)?;
    let plat_name = validate::name(cond, "condition", "plat_name")?;
    let id = validate::opt_id(cond, "condition", "stream_to_id", u32::MAX)?;
    let label = validate::label(cond, "condition")?;
    let found = svc.query_stream_tos(&plat_name, id, label.as_ref()).await;
    Ok(Value::Array(
        found.iter().map(StreamTo::to_query_json).collect(),
    ))
}

/// `add_route`: `metadata{plat_name, label?, channel_id?}`, `route?`,
/// `stream_filters?` -> `{channel_id}` (a new one when none was given).
pub async fn add_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let meta = object(body.get("metadata"), "metadata")?;
    let new = NewChannel {
        plat_name: validate::name(meta, "metadata", "plat_name")?,
        label: validate::label(meta, "metadata")?,
        channel_id: validate::opt_id(meta, "metadata", "channel_id", MAX_CHANNEL_ID)?,
        routes: validate::routes(body, "")?,
        stream_filters: validate::filters(body, "")?,
    };
    let id = svc.add_channel(new).await?;
    Ok(json!({ "channel_id": id }))
}

/// `update_route`: `condition{channel_id, plat_name}`,
/// `specification{route, stream_filters?}`; routes and filters replace
/// those of the same name, others are added.
pub async fn update_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let cond = condition(body)?;
    let id = validate::id(cond, "condition", "channel_id", MAX_CHANNEL_ID)?;
    let plat_name = validate::name(cond, "condition", "plat_name")?;
    let spec = object(body.get("specification"), "specification")?;
    let routes = validate::routes(spec, "specification")?;
    let filters = validate::filters(spec, "specification")?;
    svc.update_channel(id, &plat_name, routes, filters).await?;
    Ok(Value::Null)
}

/// `delete_route`: `condition{channel_id, plat_name}`,
/// `operation.method` `all` (the channel) or `specification` (the routes
/// and filters named in `specification{route, stream_filters}`).
pub async fn delete_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let method = validate::delete_method(body)?;
    let cond = condition(body)?;
    let id = validate::id(cond, "condition", "channel_id", MAX_CHANNEL_ID)?;
    let plat_name = validate::name(cond, "condition", "plat_name")?;
    match method {
        DeleteMethod::All => svc.delete_channel(id, &plat_name).await?,
        DeleteMethod::Specification => {
            let spec = object(body.get("specification"), "specification")?;
            let routes = validate::delete_names(spec, "specification", "route")?;
            let filters = validate::delete_names(spec, "specification", "stream_filters")?;
            svc.delete_from_channel(id, &plat_name, &routes, &filters)
                .await?;
        }
    }
    Ok(Value::Null)
}

/// `query_route`: `condition{channel_id?, plat_name?, label?}` (at least
/// one of the first two) -> a list of channels, or `null` when none.
pub async fn query_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    validate::operator(body)?;
    let cond = condition(body)?;
    let id = validate::opt_id(cond, "condition", "channel_id", MAX_CHANNEL_ID)?;
    let plat_name = match cond.get("plat_name") {
        None | Some(Value::Null) => None,
        Some(_) => Some(validate::name(cond, "condition", "plat_name")?),
    };
    if id.is_none() && plat_name.is_none() {
        return Err(RouteError::invalid("condition", "give channel_id, plat_name or both").into());
    }
    let label = validate::label(cond, "condition")?;
    let found = svc
        .query_channels(id, plat_name.as_deref(), label.as_ref())
        .await;
    if found.is_empty() {
        return Ok(Value::Null);
    }
    Ok(Value::Array(
        found.iter().map(Channel::to_query_json).collect(),
    ))
}

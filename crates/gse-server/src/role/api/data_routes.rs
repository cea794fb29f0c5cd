//! The data-route endpoints bk-monitor, bk-log and bk-cmdb call (D5,
//! COMPAT.md §2.3): `add|update|delete|query_streamto` and
//! `add|update|delete|query_route`, under `/api/v2/data/` and the legacy
//! `/api/c/compapi/v2/gse/config_*` names.
//!
//! Each reads its typed request ([`super::body::typed`]), checks its parts
//! ([`validate`]) and calls the [`RouteService`]; the answers are shaped as
//! those clients read them: `{stream_to_id}`, `{channel_id}`, lists for the
//! queries, and `null` from query_route when nothing matches
//! (bk-monitor-worker's "no route" test). Every call needs
//! `operation.operator_name`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use utoipa::ToSchema;

use super::ApiContext;
use super::body::{Fields, Verbatim, typed};
use super::error::ApiError;
use super::openapi::{Shape, answer};
use crate::role::data::routes::model::{ChannelEntry, StreamToEntry};
use crate::role::data::routes::validate::{
    self, DeleteMethod, FilterPart, Label, MAX_CHANNEL_ID, NamePart, OperationPart, RoutePart,
    StreamToPart,
};
use crate::role::data::routes::{NewChannel, RouteError, RouteService};

type Result<T> = std::result::Result<T, ApiError>;

fn service(ctx: &ApiContext) -> std::result::Result<&Arc<RouteService>, RouteError> {
    ctx.routes.as_ref().ok_or(RouteError::Unavailable)
}

// === requests ===

/// `add_streamto`.
#[derive(Deserialize, ToSchema)]
struct AddStreamTo {
    operation: OperationPart,
    metadata: StreamToOwner,
    #[schema(value_type = StreamToPart)]
    stream_to: Verbatim<StreamToPart>,
}

/// `metadata` of `add_streamto`.
#[derive(Deserialize, ToSchema)]
struct StreamToOwner {
    /// The platform that owns the stream_to (`bkmonitor`, ...).
    plat_name: String,
    #[serde(default)]
    label: Option<Label>,
}

/// `update_streamto`.
#[derive(Deserialize, ToSchema)]
struct UpdateStreamTo {
    operation: OperationPart,
    condition: StreamToCondition,
    specification: StreamToSpecification,
}

/// `specification` of `update_streamto`.
#[derive(Deserialize, ToSchema)]
struct StreamToSpecification {
    #[schema(value_type = StreamToPart)]
    stream_to: Verbatim<StreamToPart>,
}

/// `delete_streamto`.
#[derive(Deserialize, ToSchema)]
struct DeleteStreamTo {
    operation: OperationPart,
    condition: StreamToCondition,
}

/// The stream_to a change is for.
#[derive(Deserialize, ToSchema)]
struct StreamToCondition {
    #[schema(value_type = u32, minimum = 1)]
    stream_to_id: Option<Number>,
    plat_name: String,
}

/// `query_streamto`.
#[derive(Deserialize, ToSchema)]
struct QueryStreamTo {
    operation: OperationPart,
    condition: StreamToQuery,
}

/// `condition` of `query_streamto`.
#[derive(Deserialize, ToSchema)]
struct StreamToQuery {
    plat_name: String,
    /// Only this stream_to (0 or absent: all).
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    stream_to_id: Option<Number>,
    /// Only stream_tos with this label.
    #[serde(default)]
    label: Option<Label>,
}

/// `add_route`.
#[derive(Deserialize, ToSchema)]
struct AddRoute {
    operation: OperationPart,
    metadata: ChannelOwner,
    #[serde(default)]
    route: Option<Vec<RoutePart>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<FilterPart>>)]
    stream_filters: Option<Vec<Verbatim<FilterPart>>>,
}

/// `metadata` of `add_route`.
#[derive(Deserialize, ToSchema)]
struct ChannelOwner {
    plat_name: String,
    #[serde(default)]
    label: Option<Label>,
    /// The data id to register (0 or absent: a new one is allocated).
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    channel_id: Option<Number>,
}

/// `update_route`.
#[derive(Deserialize, ToSchema)]
struct UpdateRoute {
    operation: OperationPart,
    condition: ChannelCondition,
    specification: RouteSpecification,
}

/// Routes and filters to add or replace (by name).
#[derive(Deserialize, ToSchema)]
struct RouteSpecification {
    #[serde(default)]
    route: Option<Vec<RoutePart>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<FilterPart>>)]
    stream_filters: Option<Vec<Verbatim<FilterPart>>>,
}

/// `delete_route`.
#[derive(Deserialize, ToSchema)]
struct DeleteRoute {
    operation: OperationPart,
    condition: ChannelCondition,
    /// With `operation.method` `specification`: what to delete.
    #[serde(default)]
    specification: Option<DeleteSpecification>,
}

/// The routes and filters `delete_route` removes, by name.
#[derive(Deserialize, ToSchema)]
struct DeleteSpecification {
    #[serde(default)]
    route: Option<Vec<NamePart>>,
    #[serde(default)]
    stream_filters: Option<Vec<NamePart>>,
}

/// The channel a change is for.
#[derive(Deserialize, ToSchema)]
struct ChannelCondition {
    #[schema(value_type = u32, minimum = 1)]
    channel_id: Option<Number>,
    plat_name: String,
}

/// `query_route`.
#[derive(Deserialize, ToSchema)]
struct QueryRoute {
    operation: OperationPart,
    condition: RouteQuery,
}

/// `condition` of `query_route`: `channel_id`, `plat_name` or both.
#[derive(Deserialize, ToSchema)]
struct RouteQuery {
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    channel_id: Option<Number>,
    #[serde(default)]
    plat_name: Option<String>,
    #[serde(default)]
    label: Option<Label>,
}

// === answers ===

/// `add_streamto`'s answer.
#[derive(Serialize, ToSchema)]
struct StreamToAdded {
    stream_to_id: u32,
}

/// `add_route`'s answer.
#[derive(Serialize, ToSchema)]
struct ChannelAdded {
    channel_id: u32,
}

/// The `null` answer of a change.
#[derive(Serialize)]
struct Done;

// By hand: the derive has no schema for a unit struct's `null`.
impl utoipa::PartialSchema for Done {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new().schema_type(Type::Null).into()
    }
}

impl ToSchema for Done {}

/// `query_route`'s answer: the channels, or `null` when none matches.
#[derive(Serialize, ToSchema)]
struct Channels(Option<Vec<ChannelEntry>>);

pub fn shape(endpoint: super::endpoint::Endpoint) -> Shape {
    use super::endpoint::Endpoint as E;
    match endpoint {
        E::AddStreamTo => Shape::of::<AddStreamTo, StreamToAdded>(),
        E::UpdateStreamTo => Shape::of::<UpdateStreamTo, Done>(),
        E::DeleteStreamTo => Shape::of::<DeleteStreamTo, Done>(),
        E::QueryStreamTo => Shape::of::<QueryStreamTo, Vec<StreamToEntry>>(),
        E::AddRoute => Shape::of::<AddRoute, ChannelAdded>(),
        E::UpdateRoute => Shape::of::<UpdateRoute, Done>(),
        E::DeleteRoute => Shape::of::<DeleteRoute, Done>(),
        _ => Shape::of::<QueryRoute, Channels>(),
    }
}

// === handlers ===

/// `add_streamto` -> `{stream_to_id}`.
pub async fn add_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: AddStreamTo = typed(body)?;
    validate::operator(req.operation)?;
    let plat_name = validate::name(req.metadata.plat_name, "metadata.plat_name")?;
    let label = validate::label(req.metadata.label, "metadata")?;
    let spec = validate::stream_to(req.stream_to, "stream_to")?;
    let stream_to_id = svc.add_stream_to(plat_name, label, spec).await?;
    answer(&StreamToAdded { stream_to_id })
}

/// `update_streamto`: `condition{stream_to_id, plat_name}`,
/// `specification{stream_to}`.
pub async fn update_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: UpdateStreamTo = typed(body)?;
    validate::operator(req.operation)?;
    let id = validate::id(
        req.condition.stream_to_id,
        "condition.stream_to_id",
        u32::MAX,
    )?;
    let plat_name = validate::name(req.condition.plat_name, "condition.plat_name")?;
    let spec = validate::stream_to(req.specification.stream_to, "specification.stream_to")?;
    svc.update_stream_to(id, &plat_name, spec).await?;
    answer(&Done)
}

/// `delete_streamto`: `condition{stream_to_id, plat_name}`.
pub async fn delete_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: DeleteStreamTo = typed(body)?;
    validate::operator(req.operation)?;
    let id = validate::id(
        req.condition.stream_to_id,
        "condition.stream_to_id",
        u32::MAX,
    )?;
    let plat_name = validate::name(req.condition.plat_name, "condition.plat_name")?;
    svc.delete_stream_to(id, &plat_name).await?;
    answer(&Done)
}

/// `query_streamto`: `condition{plat_name, stream_to_id?, label?}` -> a
/// list (empty when none) of `{stream_to_id, metadata, stream_to}`.
pub async fn query_streamto(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: QueryStreamTo = typed(body)?;
    validate::operator(req.operation)?;
    let cond = req.condition;
    let plat_name = validate::name(cond.plat_name, "condition.plat_name")?;
    let id = validate::opt_id(cond.stream_to_id, "condition.stream_to_id", u32::MAX)?;
    let label = validate::label(cond.label, "condition")?;
    let found = svc.query_stream_tos(&plat_name, id, label.as_ref()).await;
    let entries: Vec<StreamToEntry> = found.iter().map(|s| s.to_query()).collect();
    answer(&entries)
}

/// `add_route`: `metadata{plat_name, label?, channel_id?}`, `route?`,
/// `stream_filters?` -> `{channel_id}` (a new one when none was given).
pub async fn add_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: AddRoute = typed(body)?;
    validate::operator(req.operation)?;
    let meta = req.metadata;
    let new = NewChannel {
        plat_name: validate::name(meta.plat_name, "metadata.plat_name")?,
        label: validate::label(meta.label, "metadata")?,
        channel_id: validate::opt_id(meta.channel_id, "metadata.channel_id", MAX_CHANNEL_ID)?,
        routes: validate::routes(req.route, "")?,
        stream_filters: validate::filters(req.stream_filters, "")?,
    };
    let channel_id = svc.add_channel(new).await?;
    answer(&ChannelAdded { channel_id })
}

/// `update_route`: `condition{channel_id, plat_name}`,
/// `specification{route, stream_filters?}`; routes and filters replace
/// those of the same name, others are added.
pub async fn update_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: UpdateRoute = typed(body)?;
    validate::operator(req.operation)?;
    let id = validate::id(
        req.condition.channel_id,
        "condition.channel_id",
        MAX_CHANNEL_ID,
    )?;
    let plat_name = validate::name(req.condition.plat_name, "condition.plat_name")?;
    let spec = req.specification;
    let routes = validate::routes(spec.route, "specification")?;
    let filters = validate::filters(spec.stream_filters, "specification")?;
    svc.update_channel(id, &plat_name, routes, filters).await?;
    answer(&Done)
}

/// `delete_route`: `condition{channel_id, plat_name}`,
/// `operation.method` `all` (the channel) or `specification` (the routes
/// and filters named in `specification{route, stream_filters}`).
pub async fn delete_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: DeleteRoute = typed(body)?;
    let method = validate::delete_method(&req.operation)?;
    validate::operator(req.operation)?;
    let id = validate::id(
        req.condition.channel_id,
        "condition.channel_id",
        MAX_CHANNEL_ID,
    )?;
    let plat_name = validate::name(req.condition.plat_name, "condition.plat_name")?;
    match method {
        DeleteMethod::All => svc.delete_channel(id, &plat_name).await?,
        DeleteMethod::Specification => {
            let spec = req.specification.ok_or_else(|| {
                RouteError::invalid("specification", "missing; this field is required")
            })?;
            let routes = validate::delete_names(spec.route, "specification", "route")?;
            let filters =
                validate::delete_names(spec.stream_filters, "specification", "stream_filters")?;
            svc.delete_from_channel(id, &plat_name, &routes, &filters)
                .await?;
        }
    }
    answer(&Done)
}

/// `query_route`: `condition{channel_id?, plat_name?, label?}` (at least
/// one of the first two) -> a list of channels, or `null` when none.
pub async fn query_route(ctx: &ApiContext, body: &Fields) -> Result<Value> {
    let svc = service(ctx)?;
    let req: QueryRoute = typed(body)?;
    validate::operator(req.operation)?;
    let cond = req.condition;
    let id = validate::opt_id(cond.channel_id, "condition.channel_id", MAX_CHANNEL_ID)?;
    let plat_name = cond
        .plat_name
        .map(|p| validate::name(p, "condition.plat_name"))
        .transpose()?;
    if id.is_none() && plat_name.is_none() {
        return Err(RouteError::invalid("condition", "give channel_id, plat_name or both").into());
    }
    let label = validate::label(cond.label, "condition")?;
    let found = svc
        .query_channels(id, plat_name.as_deref(), label.as_ref())
        .await;
    let channels = (!found.is_empty()).then(|| found.iter().map(|c| c.to_query()).collect());
    answer(&Channels(channels))
}

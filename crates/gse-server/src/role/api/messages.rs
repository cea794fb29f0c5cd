//! The plugin-message endpoints (COMPAT §1.3, "Server side of plugin
//! messages"): `dispatch_message` and `dispatch_multi_message`, as the GSE
//! SDK's server API and bk-monitor call them. Both answer `{results: [...]}`
//! listing only the agents the message did not reach.
//!
//! Requests are read into typed structs ([`super::body::typed`]): unknown
//! fields are ignored, an error names the field path.

use std::sync::Arc;

use gse_core::AgentRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::body::{Fields, typed};
use super::error::ApiError;
use super::openapi::{Shape, answer};
use crate::role::message::config::MAX_NAME;
use crate::role::message::{Dispatch, Failure, MessageService};

/// Both endpoints' answer: the agents the message did not reach.
#[derive(Serialize, ToSchema)]
struct Dispatched {
    results: Vec<Failure>,
}

pub fn shape_single() -> Shape {
    Shape::of::<DispatchMessage, Dispatched>()
}

pub fn shape_multi() -> Shape {
    Shape::of::<DispatchMultiMessage, Dispatched>()
}

/// `slot_id` as a number, or a string of digits.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum SlotId {
    Number(u64),
    Text(String),
}

/// `dispatch_message`.
#[derive(Deserialize, ToSchema)]
struct DispatchMessage {
    slot_id: SlotId,
    token: String,
    message_id: String,
    agent_id_list: Vec<String>,
    content: String,
}

/// `dispatch_multi_message`.
#[derive(Deserialize, ToSchema)]
struct DispatchMultiMessage {
    slot_id: SlotId,
    token: String,
    message_id: String,
    agent_message_list: Vec<AgentMessage>,
    /// Put before every agent's content.
    #[serde(default)]
    front_content: String,
    /// Put after every agent's content.
    #[serde(default)]
    back_content: String,
}

#[derive(Deserialize, ToSchema)]
struct AgentMessage {
    bk_agent_id: String,
    content: String,
}

fn service(ctx: &ApiContext) -> Result<&Arc<MessageService>, ApiError> {
    ctx.messages.as_ref().ok_or(ApiError::MessagesUnavailable)
}

/// `dispatch_message`: one content to every agent of `agent_id_list`.
pub async fn dispatch_message(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let svc = service(ctx)?;
    let req: DispatchMessage = typed(body)?;
    let targets = req
        .agent_id_list
        .into_iter()
        .map(|id| (id, req.content.clone().into_bytes()))
        .collect();
    let d = checked(
        ctx,
        svc,
        req.slot_id,
        req.token,
        req.message_id,
        targets,
        "agent_id_list",
    )?;
    dispatched(svc, d).await
}

/// `dispatch_multi_message`: each agent its own content, between
/// `front_content` and `back_content`.
pub async fn dispatch_multi_message(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let svc = service(ctx)?;
    let req: DispatchMultiMessage = typed(body)?;
    let targets = req
        .agent_message_list
        .into_iter()
        .map(|m| {
            let content = [req.front_content.as_str(), &m.content, &req.back_content].concat();
            (m.bk_agent_id, content.into_bytes())
        })
        .collect();
    let d = checked(
        ctx,
        svc,
        req.slot_id,
        req.token,
        req.message_id,
        targets,
        "agent_message_list",
    )?;
    dispatched(svc, d).await
}

/// The dispatch, once its fields are within their limits.
fn checked(
    ctx: &ApiContext,
    svc: &MessageService,
    slot_id: SlotId,
    token: String,
    message_id: String,
    targets: Vec<(String, Vec<u8>)>,
    list: &'static str,
) -> Result<Dispatch, ApiError> {
    let slot_id = match slot_id {
        SlotId::Number(n) => n,
        SlotId::Text(t) => t.trim().parse().map_err(|_| ApiError::Invalid {
            field: "slot_id".into(),
            problem: format!("{t:?} is not a slot id (an integer)"),
        })?,
    };
    if message_id.is_empty() || message_id.len() > MAX_NAME {
        return Err(ApiError::Invalid {
            field: "message_id".into(),
            problem: format!("must be 1..={MAX_NAME} bytes, got {}", message_id.len()),
        });
    }
    if targets.is_empty() {
        return Err(ApiError::Invalid {
            field: list.into(),
            problem: "empty: name at least one agent".into(),
        });
    }
    let limit = ctx.config.max_hosts_per_call;
    if targets.len() > limit {
        return Err(ApiError::TooManyEntries {
            field: list,
            count: targets.len(),
            limit,
        });
    }
    let max = svc.config().max_content_bytes;
    let id_field = match list {
        "agent_id_list" => |i: usize| format!("agent_id_list[{i}]"),
        _ => |i: usize| format!("agent_message_list[{i}].bk_agent_id"),
    };
    for (i, (id, content)) in targets.iter().enumerate() {
        AgentRef::parse(id).map_err(|source| ApiError::BadAgentId {
            field: id_field(i),
            source,
        })?;
        if content.len() > max {
            return Err(ApiError::OverLimit {
                field: if list == "agent_id_list" {
                    "content".into()
                } else {
                    format!("{list}[{i}].content (with front_content and back_content)")
                },
                what: "bytes",
                count: content.len(),
                limit: max,
                key: "plugin_message.max_content_bytes",
            });
        }
    }
    Ok(Dispatch {
        slot_id,
        token,
        message_id,
        targets,
    })
}

async fn dispatched(svc: &MessageService, d: Dispatch) -> Result<Value, ApiError> {
    let results = svc.dispatch(d).await?;
    answer(&Dispatched { results })
}

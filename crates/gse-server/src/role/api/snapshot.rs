//! `get_agent_snapshot` (D3): the system snapshots each requested agent
//! sent in the last window, read from the data role's [`SnapshotCache`].
//!
//! Agents are named as in the other v2 cluster calls (`cloud:ip` or a real
//! agent id); real ids are resolved to `cloud:ip` through the state store.
//! Every requested agent gets an entry, in request order (an agent listed
//! again, once): one with no
//! snapshot has an empty list and says why in its own `code` and `message`.
//! The snapshots are the agents' JSON objects as they sent them; docs/API.md
//! lists their fields.

use gse_core::identity::{AgentKey, AgentRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiContext;
use super::agents::agent_ids;
use super::body::{Fields, typed};
use super::error::ApiError;
use super::openapi::{Shape, answer};
use crate::role::data::snapshot::SnapshotCache;

/// Entry `code` of an agent gse does not know (GSE's "agent not found").
pub const AGENT_UNKNOWN: i64 = 1011003;
/// Entry `code` of a known agent with no snapshot in the window (ours).
pub const NO_SNAPSHOT: i64 = 1011201;

/// `get_agent_snapshot`.
#[derive(Deserialize, ToSchema)]
struct SnapshotRequest {
    /// Agent ids, or `cloud:ip`; at most `api.max_hosts_per_call`.
    agent_id_list: Vec<String>,
    /// Only each agent's latest snapshot.
    #[serde(default)]
    latest_only: Option<bool>,
}

pub fn shape() -> Shape {
    Shape::of::<SnapshotRequest, Vec<AgentSnapshots>>()
}

/// One requested agent in the answer.
#[derive(Serialize, ToSchema)]
struct AgentSnapshots {
    /// Exactly the id the caller sent.
    bk_agent_id: String,
    /// `cloud:ip` when known, else "".
    agent_key: String,
    code: i64,
    message: String,
    /// Oldest first; each the agent's JSON object as it sent it
    /// (docs/API.md lists the fields).
    #[schema(value_type = Vec<Object>)]
    snapshots: Vec<Value>,
}

pub async fn get_agent_snapshot(ctx: &ApiContext, body: &Fields) -> Result<Value, ApiError> {
    let cache = ctx
        .snapshots
        .as_ref()
        .ok_or(ApiError::SnapshotsUnavailable)?;
    let req: SnapshotRequest = typed(body)?;
    let latest_only = req.latest_only.unwrap_or(false);
    let ids = agent_ids(ctx, req.agent_id_list)?;
    let refs: Vec<AgentRef> = ids.iter().map(|(_, r)| r.clone()).collect();
    let records = ctx.store.get_agents(&refs).await?;
    // Snapshots are counted as they are taken, so an answer over the cap
    // is refused before it is built whole.
    let limit = ctx.config.max_response_bytes;
    let mut bytes = 0usize;
    let mut entries = Vec::with_capacity(ids.len());
    for ((sent, agent), record) in ids.into_iter().zip(records) {
        let key = match agent {
            AgentRef::Key(k) => Some(k),
            AgentRef::Id(_) => record.as_ref().map(|r| r.key),
        };
        let kept = match key {
            Some(k) => cache.get_anywhere(&k, latest_only).await,
            None => None,
        };
        let (entry, size) = entry(cache, sent, key, kept, record.is_some());
        bytes += size;
        if bytes > limit {
            return Err(ApiError::AnswerTooLarge { limit });
        }
        entries.push(entry);
    }
    answer(&entries)
}

fn entry(
    cache: &SnapshotCache,
    sent: String,
    key: Option<AgentKey>,
    kept: Option<Vec<std::sync::Arc<str>>>,
    known: bool,
) -> (AgentSnapshots, usize) {
    let agent_key = key.map(|k| k.to_string()).unwrap_or_default();
    let Some(kept) = kept else {
        let window = humantime::format_duration(cache.window());
        let (code, message) = if known {
            (
                NO_SNAPSHOT,
                format!(
                    "agent {sent} sent no system snapshot in the last {window}: it is offline, \
                     its data link is down, or its data.snapshot_interval is 0"
                ),
            )
        } else {
            (
                AGENT_UNKNOWN,
                format!("agent {sent} is not known to gse and sent no system snapshot"),
            )
        };
        let size = message.len();
        let entry = AgentSnapshots {
            bk_agent_id: sent,
            agent_key,
            code,
            message,
            snapshots: Vec::new(),
        };
        return (entry, size);
    };
    let size = kept.iter().map(|json| json.len()).sum();
    // The cache only keeps JSON objects; a parse failure cannot happen.
    let snapshots = kept
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect();
    let entry = AgentSnapshots {
        bk_agent_id: sent,
        agent_key,
        code: 0,
        message: String::new(),
        snapshots,
    };
    (entry, size)
}

#[cfg(test)]
mod tests;

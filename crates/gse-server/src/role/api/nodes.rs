//! `POST /api/v2/cluster/list_nodes` (K1, our extension): the server nodes
//! of the cluster as the registry sees them, from any node:
//! `[{node_id, region, roles, agent_addr, api_addr, agents,
//! data_servers}]`, sorted by node id. A single node lists itself.

use gse_core::seams::NodeInfo;
use serde_json::Value;

use super::ApiContext;
use super::body::NoFields;
use super::error::ApiError;
use super::openapi::Shape;

pub fn shape() -> Shape {
    Shape::of::<NoFields, Vec<NodeInfo>>()
}

pub async fn list_nodes(ctx: &ApiContext) -> Result<Value, ApiError> {
    let Some(registry) = &ctx.registry else {
        return Ok(Value::Array(Vec::new()));
    };
    let mut nodes = registry.nodes().await?;
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(serde_json::to_value(nodes).unwrap_or(Value::Null))
}

//! `gsectl nodes`: the cluster's server nodes (K1) as any node's registry
//! sees them: id, region, roles, where agents and API clients reach it, and
//! how many agents it holds.

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::json;

use crate::client::ApiClient;
use crate::table::Table;

const LIST_NODES: &str = "/api/v2/cluster/list_nodes";

/// Options of `gsectl nodes`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Print the API's answer (its `data`) as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One entry of `list_nodes`.
#[derive(Debug, Deserialize)]
struct Node {
    node_id: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    agent_addr: String,
    #[serde(default)]
    api_addr: String,
    #[serde(default)]
    agents: u64,
}

pub async fn run(client: &ApiClient, args: &NodesArgs) -> Result<()> {
    let data = client.post(LIST_NODES, &json!({})).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let nodes: Vec<Node> = serde_json::from_value(data)
        .context("the server's answer has an unexpected shape; is gsectl older than gse-server?")?;
    print!("{}", table(&nodes).render());
    Ok(())
}

fn table(nodes: &[Node]) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "REGION",
        "ROLES",
        "AGENT ADDR",
        "API ADDR",
        "AGENTS",
    ]);
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    for n in nodes {
        t.push(vec![
            n.node_id.clone(),
            dash(&n.region),
            n.roles.join(","),
            dash(&n.agent_addr),
            dash(&n.api_addr),
            n.agents.to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_one_row_each() {
        let nodes: Vec<Node> = serde_json::from_value(json!([
            {"node_id": "gse-1", "region": "", "roles": ["api", "link"], "agent_addr": "10.0.0.1:28668",
             "api_addr": "10.0.0.1:59313", "agents": 12},
            {"node_id": "gse-2", "region": "east", "roles": ["link"], "agent_addr": "10.0.0.2:28668", "agents": 3},
        ]))
        .unwrap();
        let text = table(&nodes).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        assert!(
            lines[1].contains("gse-1") && lines[1].contains("api,link") && lines[1].ends_with("12"),
            "{text}"
        );
        assert!(
            lines[2].contains("east") && lines[2].contains(" - "),
            "{text}"
        );
    }
}

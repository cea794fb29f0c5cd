//! D3 across nodes: the system snapshots an agent sends to one node's
//! DataServer are served by the API of another node.

use std::sync::Arc;
use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, eventually};
use serde_json::json;

#[tokio::test]
async fn r11_snapshots_are_readable_through_a_node_that_did_not_receive_them() {
    let cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        // The agent stays on node-1 and sends its data there.
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(1)
        .agent_options(|_, opts: &mut AgentOptions| {
            opts.customize = Some(Arc::new(|cfg| {
                cfg.data.snapshot_interval = Duration::from_secs(1);
            }));
        })
        .start()
        .await;
    let api2 = cluster.api(1);
    let snap = eventually(
        "a snapshot through node-2",
        Duration::from_secs(30),
        || async {
            let (status, v) = api2
                .post(
                    "/api/v2/cluster/get_agent_snapshot",
                    json!({"agent_id_list": ["0:127.0.0.1"], "latest_only": true}),
                )
                .await;
            let entry = &v["data"][0];
            (status == 200
                && entry["code"] == 0
                && entry["snapshots"].as_array().is_some_and(|s| s.len() == 1))
            .then(|| entry["snapshots"][0].clone())
            .ok_or(v.to_string())
        },
    )
    .await;
    assert_eq!(snap["ip"], "127.0.0.1", "{snap}");
    assert!(snap["cpu"]["count"].as_u64().unwrap_or(0) > 0, "{snap}");
}

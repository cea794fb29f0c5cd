//! D5 across nodes: a route added through one node's API carries the
//! records that enter through another node's DataServer, without a
//! restart; a route deleted through it stops there too.

use std::time::Duration;

use gse_testkit::{Cluster, eventually};
use serde_json::json;

use crate::d_routes::{V2, file_payloads, has_all, ok, op, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_route_added_on_one_node_carries_records_entering_through_another() {
    let cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        // Agents stay where they first register (K2 would move some).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(1)
        .start()
        .await;
    // The agent registered with node-1 and sends its data to node-1's
    // DataServer; the route is added through node-2.
    let api2 = cluster.api(1);
    let data_id = 1311;
    let st = ok(
        api2,
        &format!("{V2}/add_streamto"),
        json!({"metadata": {"plat_name": "bkmonitor"}, "operation": op(),
               "stream_to": {"name": "file", "report_mode": "file", "data_log_path": "routes"}}),
    )
    .await["stream_to_id"]
        .clone();
    ok(
        api2,
        &format!("{V2}/add_route"),
        json!({"metadata": {"plat_name": "bkmonitor", "channel_id": data_id}, "operation": op(),
               "route": [{"name": "to_file", "stream_to": {"stream_to_id": st}}]}),
    )
    .await;

    let file = cluster.nodes[0]
        .dir
        .join("data/routes")
        .join(format!("{data_id}_to_file.jsonl"));
    let agent = &cluster.agents[0];
    // Records sent before node-1 applied the route are not routed there;
    // keep sending a probe until one arrives, then check a full batch.
    eventually(
        "node-1 routes the new data id",
        Duration::from_secs(20),
        || async {
            send(agent, data_id, "probe", 1).await;
            let got = file_payloads(&file);
            got.iter()
                .any(|p| p.starts_with("probe"))
                .then_some(())
                .ok_or("no probe routed yet".to_string())
        },
    )
    .await;
    let sent = send(agent, data_id, "a", 50).await;
    eventually(
        "every record in node-1's file route",
        Duration::from_secs(20),
        || async { has_all(&file_payloads(&file), &sent) },
    )
    .await;
}

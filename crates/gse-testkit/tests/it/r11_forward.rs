//! T1 across nodes: the API of any node runs work on agents another node
//! holds. Two nodes on one ZooKeeper and one Redis; the agents list node-1
//! first, so node-1 holds them and node-2's API must forward over the node
//! link, and get the agents' output back from node-1.

use std::time::Duration;

use gse_testkit::{Cluster, eventually};
use serde_json::json;

use crate::task_api::{RESULT, is_final, start, wait_final};

#[tokio::test]
async fn r11_a_task_asked_of_one_node_runs_on_agents_another_node_holds() {
    let cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        .agents(2)
        // Both agents stay on node-1 (K2 balance would move one).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .start()
        .await;
    // Both registry entries carry a node-link address.
    let nodes = cluster.api(0).list_nodes().await.unwrap();
    assert!(nodes.iter().all(|n| !n.node_addr.is_empty()), "{nodes:?}");
    let held = held_by(&cluster, 0).await;
    assert_eq!(held, 2, "agents register with the first node they list");

    let targets = ["0:127.0.0.1", "0:127.0.0.2", "0:10.9.9.9"];
    for i in [1, 0] {
        let api = cluster.api(i);
        let task = start(api, &targets, "echo hello from agent", json!({})).await;
        let done = wait_final(api, &task, &targets, Duration::from_secs(30)).await;
        for e in &done {
            if e["bk_agent_id"] == "0:10.9.9.9" {
                assert_eq!(e["error_code"], 117, "an unknown agent fails at once: {e}");
                continue;
            }
            assert_eq!(e["status"], 2, "success, asked of node-{}: {e}", i + 1);
            assert_eq!(e["screen"], "hello from agent\n", "{e}");
        }
        // The record is readable through the other node too, once the
        // owner's writer has flushed it (every few hundred ms).
        let other = cluster.api(1 - i);
        let seen = eventually("the record through the other node", Duration::from_secs(10), || async {
            let agent_tasks: Vec<_> = targets
                .iter()
                .map(|a| json!({"bk_agent_id": a, "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}]}))
                .collect();
            let (_, v) = other
                .post(RESULT, json!({"task_id": task, "agent_tasks": agent_tasks}))
                .await;
            let list = v["data"]["result"].as_array().cloned().unwrap_or_default();
            (list.len() == 3 && list.iter().all(is_final)).then_some(list).ok_or(v.to_string())
        })
        .await;
        assert_eq!(seen, done, "the same entries through either node");
    }
}

/// How many agents node i holds, as its own API's `get_agent_info`
/// reports their parent port.
async fn held_by(cluster: &gse_testkit::StartedCluster, i: usize) -> usize {
    let port = cluster.nodes[i].link_addr.port();
    let mut held = 0;
    for agent in &cluster.agents {
        let (_, v) = cluster
            .api(i)
            .post(
                "/api/c/compapi/v2/gse/get_agent_info/",
                json!({"bk_supplier_account": "0", "hosts": [{"ip": agent.ip.to_string(), "bk_cloud_id": 0}]}),
            )
            .await;
        let key = format!("0:{}", agent.ip);
        if v["data"][&key]["parent_port"].as_u64() == Some(u64::from(port)) {
            held += 1;
        }
    }
    held
}

#[tokio::test]
async fn r11_a_transfer_asked_of_one_node_moves_files_between_agents_another_node_holds() {
    use crate::f_files::{code, download_of, noise, task, wait_final as wait_files, write_file};
    let cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        .agents(2)
        // Both agents stay on node-1 (K2 balance would move one).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .start()
        .await;
    assert_eq!(held_by(&cluster, 0).await, 2, "node-1 holds both agents");
    let src = cluster.cluster.path.join("src");
    let small = noise(5000, 11);
    let large = noise(3 << 20, 12);
    write_file(&src.join("small.cfg"), &small, 0o640);
    write_file(&src.join("large.bin"), &large, 0o644);
    let dst = cluster.cluster.path.join("dst");
    let api = cluster.api(1);
    let tasks = vec![
        task("0:127.0.0.1", &src, "small.cfg", &["0:127.0.0.2"], &dst),
        task("0:127.0.0.1", &src, "large.bin", &["0:127.0.0.2"], &dst),
    ];
    let id = crate::f_files::start(api, tasks, json!({})).await;
    let done = wait_files(api, &id, 4, Duration::from_secs(60)).await;
    let d = download_of(&done, "0:127.0.0.2");
    assert_eq!(code(d), 0, "{done:#?}");
    // The large file went P2P between the agents (their peer addresses
    // come from the shared store: neither is held by the owning node).
    let p2p: u64 = crate::f_files::downloads(&done)
        .iter()
        .map(|d| d["content"]["bytes_p2p"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(p2p, large.len() as u64, "{done:#?}");
    assert_eq!(std::fs::read(dst.join("small.cfg")).unwrap(), small);
    assert_eq!(std::fs::read(dst.join("large.bin")).unwrap(), large);
}

#[tokio::test]
async fn r11_plugin_operations_asked_of_one_node_run_on_an_agent_another_node_holds() {
    use crate::d_plugins::{Plugin, alive, op_code, status};
    let cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        // Agents stay where they first register (K2 would move some).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(1)
        .start()
        .await;
    assert_eq!(held_by(&cluster, 0).await, 1, "node-1 holds the agent");
    let api = cluster.api(1);
    let plugin = Plugin::new(&cluster.agents[0].dir, false);
    let (code, msg) = op_code(api, 0, "0:127.0.0.1", "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0, "start through node-2: {msg}");
    let pid = plugin.pid().expect("the plugin wrote its pid");
    assert!(alive(pid));
    // Its status, reported by the agent to node-1, reads through node-2.
    let info = eventually(
        "the plugin's status through node-2",
        Duration::from_secs(20),
        || async {
            let info = status(api).await;
            (info["status"] == 1)
                .then_some(info.clone())
                .ok_or(info.to_string())
        },
    )
    .await;
    assert_eq!(info["bk_agent_id"], "0:127.0.0.1");
    let (code, msg) = op_code(api, 1, "0:127.0.0.1", "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0, "stop through node-2: {msg}");
    assert!(!alive(pid));
}

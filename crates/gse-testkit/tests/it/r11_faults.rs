//! Issue 11 item 9: Redis and ZooKeeper faults. While Redis is down the API
//! answers "store unavailable" at once instead of hanging; after Redis
//! restarts (from its append-only file) or ZooKeeper restarts (even
//! empty, so every session and entry is gone) the nodes reconnect,
//! re-register, and work runs through any node again within 30 s; no node
//! exits.

use std::time::{Duration, Instant};

use gse_core::seams::Registry;
use gse_server::cluster::{ClusterConfig, ZkRegistry};
use gse_testkit::{Cluster, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::task_api::{EXECUTE, start, wait_final};

/// A task through node `i` on both agents, to completion.
async fn work_runs_through(cluster: &gse_testkit::StartedCluster, i: usize) {
    let api = cluster.api(i);
    let targets = ["0:127.0.0.1", "0:127.0.0.2"];
    let task = start(api, &targets, "echo ok", json!({})).await;
    for e in wait_final(api, &task, &targets, Duration::from_secs(30)).await {
        assert_eq!(
            (e["status"].as_i64(), e["screen"].as_str()),
            (Some(2), Some("ok\n")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn r11_nodes_ride_out_a_redis_restart_and_a_zookeeper_restart() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        // Agents stay where they register: a K2 hand-over mid-task would
        // end the task, which is not the fault under test.
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(2)
        .start()
        .await;
    work_runs_through(&cluster, 1).await;

    // Redis down: a clear, quick "store unavailable".
    cluster.redis.as_mut().unwrap().stop();
    let asked = Instant::now();
    let (status, v) = cluster
        .api(0)
        .post(
            EXECUTE,
            json!({
                "agents": [{"bk_agent_id": "0:127.0.0.1"}],
                "atomic_tasks": [{"atomic_task_id": 0, "command": "echo x", "timeout_seconds": 10}],
                "atomicTaskNum": 0,
            }),
        )
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "answered in {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], 1000503, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains("store"),
        "{v}"
    );

    // Redis back (from its append-only file): work runs through both nodes.
    cluster.redis.as_mut().unwrap().restart().await;
    for i in [0, 1] {
        retry_until_working(&cluster, i).await;
    }

    // ZooKeeper restarted empty: every node re-registers, as an observer
    // reading ZooKeeper itself sees.
    let zk = cluster.zookeeper.as_mut().unwrap();
    zk.restart_empty().await;
    let observer = ZkRegistry::start(
        ClusterConfig {
            zookeeper: vec![zk.connect_string()],
            ..ClusterConfig::default()
        },
        CancellationToken::new(),
    )
    .await
    .expect("an observer session");
    eventually(
        "both nodes back in ZooKeeper",
        Duration::from_secs(30),
        || async {
            let ids: Vec<String> = observer
                .nodes()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|n| n.node_id)
                .filter(|id| id.starts_with("node-"))
                .collect();
            (ids == ["node-1", "node-2"])
                .then_some(())
                .ok_or(format!("{ids:?}"))
        },
    )
    .await;
    cluster.wait_members().await;
    work_runs_through(&cluster, 0).await;
    assert_eq!(
        cluster.running_ids(),
        ["node-1", "node-2"],
        "no node exited"
    );
}

/// Waits (30 s) until a task through node `i` completes on both agents.
async fn retry_until_working(cluster: &gse_testkit::StartedCluster, i: usize) {
    let api = cluster.api(i);
    eventually(&format!("work through node-{}", i + 1), Duration::from_secs(30), || async {
        let targets = ["0:127.0.0.1", "0:127.0.0.2"];
        let body = json!({
            "agents": targets.iter().map(|a| json!({"bk_agent_id": a})).collect::<Vec<_>>(),
            "atomic_tasks": [{"atomic_task_id": 0, "command": "echo ok", "timeout_seconds": 10}],
            "atomicTaskNum": 0,
        });
        let (status, v) = api.post(EXECUTE, body).await;
        if status != 200 || v["code"] != 0 {
            return Err(format!("{status} {v}"));
        }
        let task = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
        let done = wait_final(api, &task, &targets, Duration::from_secs(20)).await;
        done.iter()
            .all(|e| e["status"] == 2)
            .then_some(())
            .ok_or(format!("{done:?}"))
    })
    .await;
}

//! Issue 11 item 8: SIGKILL a node. Its agents register on the others
//! within 30 s and status is right again through any node; work that was
//! running on them, asked of another node, ends with a per-host error
//! instead of hanging; `agent_lost` is raised once in the cluster (by the
//! survivor that adopts the dead node's agents), only for an agent that did
//! not come back; the moved agents take new work.

use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, ServerOptions, StartedCluster, eventually};
use serde_json::json;

use crate::task_api::{entries, start, wait_final};

const GRACE: Duration = Duration::from_secs(6);

fn lost_alarms(cluster: &StartedCluster, i: usize, agent: &str) -> usize {
    cluster.nodes[i]
        .alarms()
        .iter()
        .filter(|a| a["kind"] == "agent_lost" && a["agent"] == agent)
        .count()
}

#[tokio::test]
async fn r11_a_killed_node_s_agents_move_its_work_ends_and_one_lost_alarm_is_raised() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        // Agents stay where they first register (K2 would move some).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(2)
        .server_options(ServerOptions {
            lost_grace: GRACE,
            ..ServerOptions::default()
        })
        .start()
        .await;
    // An agent that knows only node-1: it cannot come back.
    let only = cluster.nodes[0].link_addr;
    let _stranded = cluster
        .cluster
        .agent_of(&[only], AgentOptions::ip("127.0.0.9"));
    cluster.wait_alive_somewhere("127.0.0.9").await;

    // Work asked of node-2, running on agents node-1 holds: one that
    // moves to node-2, one that never comes back (only the node leaving
    // ends its work).
    let api2 = cluster.api(1).clone();
    let running = ["0:127.0.0.1", "0:127.0.0.9"];
    let task = start(&api2, &running, "sleep 120", json!({})).await;
    eventually("the task running", Duration::from_secs(20), || async {
        let e = entries(&api2, &task, &running).await;
        e.iter()
            .all(|e| e["status"] == 1)
            .then_some(())
            .ok_or(format!("{e:?}"))
    })
    .await;

    cluster.kill9(0);

    // The running work ends, with a reason, long before its own timeout.
    let done = wait_final(&api2, &task, &running, Duration::from_secs(30)).await;
    for e in &done {
        assert_ne!(e["status"], 2, "not a success: {e}");
        assert!(
            !e["error_msg"].as_str().unwrap_or_default().is_empty(),
            "a per-host reason: {e}"
        );
    }

    // The agents that know node-2 are there, through its API.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        api2.wait_alive(ip).await;
    }
    // They take new work.
    let targets = ["0:127.0.0.1", "0:127.0.0.2"];
    let task = start(&api2, &targets, "echo moved", json!({})).await;
    for e in wait_final(&api2, &task, &targets, Duration::from_secs(30)).await {
        assert_eq!(
            (e["status"].as_i64(), e["screen"].as_str()),
            (Some(2), Some("moved\n")),
            "{e}"
        );
    }

    // The stranded agent: offline through node-2, and one agent_lost from
    // node-2 after the grace; none for the agents that moved.
    eventually("127.0.0.9 offline", Duration::from_secs(30), || async {
        let alive = api2.alive(0, "127.0.0.9").await;
        (alive == 0).then_some(()).ok_or(format!("alive = {alive}"))
    })
    .await;
    eventually(
        "one agent_lost for 0:127.0.0.9",
        GRACE + Duration::from_secs(30),
        || async {
            let n = lost_alarms(&cluster, 1, "0:127.0.0.9");
            (n == 1).then_some(()).ok_or(format!("{n} alarms"))
        },
    )
    .await;
    for ip in ["0:127.0.0.1", "0:127.0.0.2"] {
        assert_eq!(
            lost_alarms(&cluster, 1, ip),
            0,
            "{ip} came back: no agent_lost"
        );
    }
}

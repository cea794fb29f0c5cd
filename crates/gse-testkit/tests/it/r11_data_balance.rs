//! D4 across nodes: a node's balancer sees every node's DataServers (as
//! their registry entries publish them). An agent of a node without
//! DataServers is given another node's at registration, and a node whose
//! only DataServer is loaded moves one of its agents to another node's;
//! the records arrive through the other node's DataServer and its route.
//! A node that dies takes its DataServers out of every node's view: its
//! agents' holders give them another.

use std::path::PathBuf;
use std::time::Duration;

use gse_server::config::{Role, ServerConfig};
use gse_testkit::{AgentOptions, Cluster, ServerProc, StartedCluster, eventually};

use crate::d_data::{DATA_ID, file_route, sink_counts, socket_of, stream_records};
use crate::d_routes::{file_payloads, has_all, send};

/// Node i's file sink of [`file_route`] (the route is shared: every node
/// writes what its own DataServers receive to its own directory).
fn sink_of(node: &ServerProc) -> PathBuf {
    node.dir
        .join("data")
        .join("sink")
        .join(format!("{DATA_ID}_r1.jsonl"))
}

/// Agents stay on the node they register with (K2 would move some), and
/// rounds come often.
fn base(cfg: &mut ServerConfig) {
    cfg.cluster.balance = false;
    cfg.data.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.data.rebalance_interval = Duration::from_secs(2);
}

/// `nodes` nodes, the first without DataServers, and a file route.
async fn without_data_servers_on_the_first(nodes: usize) -> StartedCluster {
    let cluster = Cluster::builder()
        .nodes(nodes)
        .zookeeper()
        .node_config(|i, cfg| {
            base(cfg);
            if i == 0 {
                cfg.node.roles = vec![Role::Api, Role::Link, Role::Alarm];
            }
        })
        .start()
        .await;
    file_route(&cluster.nodes[0], DATA_ID).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_an_agent_of_a_node_without_data_servers_sends_through_another_nodes() {
    let cluster = without_data_servers_on_the_first(2).await;
    // Only node-1 in its server list: it registers there, and node-1 has
    // no DataServer of its own.
    let agent = cluster
        .cluster
        .agent(&cluster.nodes[0], AgentOptions::ip("127.0.0.1"));
    cluster.api(0).wait_alive("127.0.0.1").await;

    let sink = sink_of(&cluster.nodes[1]);
    // The route reaches node-2's DataServer within a second (D5 across
    // nodes): probe until one record is there, then check a batch.
    eventually(
        "a record through node-2's DataServer",
        Duration::from_secs(30),
        || async {
            send(&agent, DATA_ID, "probe", 1).await;
            file_payloads(&sink)
                .iter()
                .any(|p| p.starts_with("probe"))
                .then_some(())
                .ok_or_else(|| "nothing in node-2's sink yet".to_string())
        },
    )
    .await;
    let sent = send(&agent, DATA_ID, "a", 50).await;
    eventually(
        "every record in node-2's sink",
        Duration::from_secs(20),
        || async { has_all(&file_payloads(&sink), &sent) },
    )
    .await;
}

/// Sends probes through `agent` until one is in one of `sinks`; returns
/// that sink's index.
async fn probe_until_in(agent: &gse_testkit::AgentProc, sinks: &[PathBuf], tag: &str) -> usize {
    eventually(
        &format!("a {tag} record through a DataServer"),
        Duration::from_secs(40),
        || async {
            send(agent, DATA_ID, tag, 1).await;
            sinks
                .iter()
                .position(|s| file_payloads(s).iter().any(|p| p.starts_with(tag)))
                .ok_or_else(|| format!("no {tag} record in {sinks:?} yet"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_when_the_node_of_an_agents_data_server_dies_its_holder_gives_it_another() {
    let mut cluster = without_data_servers_on_the_first(3).await;
    let agent = cluster
        .cluster
        .agent(&cluster.nodes[0], AgentOptions::ip("127.0.0.1"));
    cluster.api(0).wait_alive("127.0.0.1").await;
    let sinks = [sink_of(&cluster.nodes[1]), sink_of(&cluster.nodes[2])];
    let first = probe_until_in(&agent, &sinks, "before").await;

    // The node of that DataServer dies; node-1 sees its entry go and gives
    // the agent the other one (what the agent spooled meanwhile follows).
    cluster.kill9(first + 1);
    let other = 1 - first;
    let sent = send(&agent, DATA_ID, "during", 20).await;
    let after = probe_until_in(&agent, &sinks[other..=other], "after").await;
    assert_eq!(after, 0);
    eventually(
        "the records sent while the DataServer was gone",
        Duration::from_secs(30),
        || async { has_all(&file_payloads(&sinks[other]), &sent) },
    )
    .await;
    assert!(
        cluster.nodes[0].log().contains(&format!(
            "node-{}/data0 takes an agent without a DataServer",
            other + 2
        )),
        "node-1 did not reassign the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_node_moves_an_agent_from_its_loaded_data_server_to_another_nodes() {
    let mut cluster = Cluster::builder()
        .nodes(1)
        .zookeeper()
        .node_config(|_, cfg| base(cfg))
        .start()
        .await;
    file_route(&cluster.nodes[0], DATA_ID).await;
    // Both agents register while node-1 is the only node: both send to
    // node-1's one DataServer.
    let mut agents = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        agents.push(
            cluster
                .cluster
                .agent(&cluster.nodes[0], AgentOptions::ip(ip)),
        );
        cluster.api(0).wait_alive(ip).await;
    }
    // Node-2 joins with an idle DataServer; the agents stay on node-1's
    // link (they list only node-1).
    let node2 = cluster.add_node().await;

    let n = 2500;
    let pad = "x".repeat(1000);
    let mut senders = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        senders.push(tokio::spawn(stream_records(
            socket_of(agent),
            format!("a{}-{pad}", i + 1),
            n,
            10,
            Duration::from_millis(20),
        )));
    }
    for s in senders {
        s.await.unwrap();
    }
    let want: Vec<String> = (1..=2)
        .flat_map(|a| {
            let pad = pad.clone();
            (0..n).map(move |i| format!("a{a}-{pad}-{i}"))
        })
        .collect();
    let sinks = [sink_of(&cluster.nodes[0]), sink_of(&cluster.nodes[node2])];
    eventually(
        "every record in node-1's or node-2's sink",
        Duration::from_secs(60),
        || async {
            let mut got = Vec::new();
            for s in &sinks {
                got.extend(sink_counts(s).into_keys());
            }
            has_all(&got, &want)
        },
    )
    .await;
    let log = cluster.nodes[0].log();
    let moved: Vec<&str> = log.lines().filter(|l| l.contains("rebalance:")).collect();
    assert!(
        moved.iter().any(|l| l.contains("node-2/data0")),
        "node-1 moved no agent to node-2's DataServer: {moved:?}"
    );
    assert!(
        !sink_counts(&sinks[1]).is_empty(),
        "nothing arrived through node-2's DataServer"
    );
    assert!(
        agents
            .iter()
            .any(|a| a.log().contains("DataServer reassigned")),
        "no agent saw a DataAssign"
    );
}

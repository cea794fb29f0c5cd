//! The testkit's cluster builder end to end: three `gse-server` processes
//! on one ZooKeeper see each other, agents that list every node register,
//! and a node that is SIGKILLed leaves every other node's list.

use gse_testkit::Cluster;

#[tokio::test]
async fn k1_three_nodes_see_each_other_and_a_killed_one_leaves() {
    let mut cluster = Cluster::builder()
        .nodes(3)
        .zookeeper()
        // Membership is under test: agents stay where they register (a K2
        // hand-over between the reads below would be a race).
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .agents(2)
        .start()
        .await;
    let all = ["node-1", "node-2", "node-3"];
    for i in 0..3 {
        let nodes = cluster.api(i).list_nodes().await.unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, all, "node {i} lists every member");
        for (n, proc) in nodes.iter().zip(&cluster.nodes) {
            assert_eq!(n.api_addr, proc.api_addr.to_string(), "{n:?}");
            assert_eq!(n.agent_addr, proc.link_addr.to_string(), "{n:?}");
        }
    }
    // Each agent is held by exactly one node: every node's API (one shared
    // store) names the same parent, one of the nodes.
    for agent in &cluster.agents {
        let ip = agent.ip.to_string();
        let mut parents = Vec::new();
        for i in 0..3 {
            let (_, v) = cluster
                .api(i)
                .post(
                    "/api/c/compapi/v2/gse/get_agent_info/",
                    serde_json::json!({"bk_supplier_account": "0", "hosts": [{"ip": ip, "bk_cloud_id": 0}]}),
                )
                .await;
            parents.push(v["data"][format!("0:{ip}")]["parent_port"].as_u64());
        }
        assert!(parents.windows(2).all(|w| w[0] == w[1]), "{parents:?}");
        let ports: Vec<Option<u64>> = cluster
            .nodes
            .iter()
            .map(|n| Some(u64::from(n.link_addr.port())))
            .collect();
        assert!(
            ports.contains(&parents[0]),
            "agent {ip} held by a node: {parents:?}"
        );
    }

    cluster.kill9(1);
    assert_eq!(cluster.running_ids(), ["node-1", "node-3"]);
    cluster.wait_members().await;
    let left = cluster.api(2).list_nodes().await.unwrap();
    assert!(left.iter().all(|n| n.node_id != "node-2"), "{left:?}");
}

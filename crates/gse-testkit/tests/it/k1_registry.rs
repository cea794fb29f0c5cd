//! K1: nodes find each other through a real ZooKeeper: each node's entry
//! (id, region, roles, addresses, load) is seen by the others, joins and
//! departures within seconds, and a ZooKeeper restart (even one that
//! lost its data, expiring every session) is survived.

use std::time::Duration;

use gse_core::seams::{NodeInfo, Registry};
use gse_server::cluster::{ClusterConfig, ZkRegistry};
use gse_testkit::eventually;
use gse_testkit::zookeeper::ZooKeeperServer;
use tokio_util::sync::CancellationToken;

fn config(zk: &ZooKeeperServer, root: &str) -> ClusterConfig {
    ClusterConfig {
        zookeeper: vec![zk.connect_string()],
        zk_root: root.into(),
        session_timeout: Duration::from_secs(4),
        refresh: Duration::from_millis(300),
        ..ClusterConfig::default()
    }
}

fn node(id: &str, agents: u64) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        region: "east".into(),
        roles: vec!["api".into(), "link".into()],
        agent_addr: format!("127.0.0.1:{}", 28000 + agents),
        api_addr: "127.0.0.1:59313".into(),
        agents,
        node_addr: String::new(),
        data_servers: Vec::new(),
    }
}

/// Waits until `registry` lists exactly `want` (node id, agents).
async fn sees(registry: &ZkRegistry, want: &[(&str, u64)]) {
    eventually(
        &format!("the registry lists {want:?}"),
        Duration::from_secs(20),
        || async {
            let got: Vec<(String, u64)> = registry
                .nodes()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|n| (n.node_id, n.agents))
                .collect();
            let want: Vec<(String, u64)> = want.iter().map(|(n, a)| (n.to_string(), *a)).collect();
            (got == want).then_some(()).ok_or(format!("{got:?}"))
        },
    )
    .await;
}

#[tokio::test]
async fn k1_nodes_see_joins_load_and_departures() {
    let mut zk = ZooKeeperServer::start().await;
    let stop_a = CancellationToken::new();
    let a = ZkRegistry::start(config(&zk, "/gse-k1"), stop_a.clone())
        .await
        .expect("node a registers");
    a.announce(node("a", 1)).await.unwrap();
    sees(&a, &[("a", 1)]).await;

    let stop_b = CancellationToken::new();
    let b = ZkRegistry::start(config(&zk, "/gse-k1"), stop_b.clone())
        .await
        .expect("node b registers");
    let changes = a.watch();
    b.announce(node("b", 2)).await.unwrap();
    sees(&a, &[("a", 1), ("b", 2)]).await;
    sees(&b, &[("a", 1), ("b", 2)]).await;
    assert!(changes.has_changed().unwrap(), "watchers hear of the join");
    let entry = a.nodes().await.unwrap()[1].clone();
    assert_eq!(entry, node("b", 2), "every field travels");

    // Load changes are seen without a restart.
    b.announce(node("b", 7)).await.unwrap();
    sees(&a, &[("a", 1), ("b", 7)]).await;

    // Another cluster on the same ZooKeeper is not mixed in.
    let stop_c = CancellationToken::new();
    let c = ZkRegistry::start(config(&zk, "/other"), stop_c.clone())
        .await
        .unwrap();
    c.announce(node("c", 0)).await.unwrap();
    sees(&c, &[("c", 0)]).await;

    // ZooKeeper restarted: the session resumes and the entries stay.
    zk.restart().await;
    b.announce(node("b", 8))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sees(&a, &[("a", 1), ("b", 8)]).await;

    // ZooKeeper lost its data: sessions expired, entries gone. Each node
    // opens a new session and makes its entry again.
    zk.restart_empty().await;
    sees(&a, &[("a", 1), ("b", 8)]).await;
    sees(&b, &[("a", 1), ("b", 8)]).await;

    // A clean stop leaves at once (its session is closed).
    stop_b.cancel();
    drop(b);
    sees(&a, &[("a", 1)]).await;
    stop_a.cancel();
    stop_c.cancel();
}

#[tokio::test]
async fn k1_an_unreachable_zookeeper_is_one_clear_error() {
    let port = gse_testkit::free_port();
    let cfg = ClusterConfig {
        zookeeper: vec![format!("127.0.0.1:{port}")],
        session_timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    };
    let started = std::time::Instant::now();
    let err = match ZkRegistry::start(cfg, CancellationToken::new()).await {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("[cluster] zookeeper"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails promptly"
    );
}

#[tokio::test]
async fn k1_list_nodes_and_gsectl_nodes_show_every_member_from_any_node() {
    let mut cluster = gse_testkit::Cluster::builder()
        .nodes(2)
        .zookeeper()
        .node_config(|_, cfg| cfg.node.region = "east".into())
        .start()
        .await;
    let nodes = cluster.api(0).list_nodes().await.unwrap();
    let second = &nodes[1];
    let n2 = &cluster.nodes[1];
    assert_eq!(second.region, "east", "{second:?}");
    assert_eq!(second.api_addr, n2.api_addr.to_string(), "{second:?}");
    assert_eq!(second.agent_addr, n2.link_addr.to_string(), "{second:?}");
    let out = cluster.api(0).gsectl().arg("nodes").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("node-2") && text.contains(&n2.link_addr.to_string()),
        "{text}"
    );

    // A node that dies leaves within the session timeout; back, it rejoins.
    cluster.kill9(1);
    cluster.wait_members().await;
    cluster.nodes[1].start_again().await;
    cluster.wait_members().await;
    assert_eq!(cluster.running_ids(), ["node-1", "node-2"]);
    // A clean stop leaves at once.
    cluster.nodes[1].stop();
    cluster.api(0).wait_listed(&["node-1".into()]).await;
}

#[tokio::test]
async fn k1_a_node_without_zookeeper_refuses_to_start_and_says_why() {
    let port = gse_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::k1_registry::loopback_config(dir.path());
    cfg.cluster.zookeeper = vec![format!("127.0.0.1:{port}")];
    cfg.cluster.session_timeout = Duration::from_secs(2);
    cfg.cluster.node_listen = "127.0.0.1:0".parse().unwrap();
    // A member keeps its state in Redis: a real one, so that ZooKeeper is
    // what fails.
    let redis = gse_testkit::redis::RedisServer::start(None).await;
    cfg.store.redis = Some(redis.url());
    let stderr = crate::k1_registry::refused_start(dir.path(), &cfg);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("cannot join the cluster"), "{stderr}");
}

/// A node's config in `dir` (fresh certificates, loopback listeners on free
/// ports), for tests that start `gse-server run` by hand.
/// Runs `gse-server run` on `cfg` (written to `dir`), which must refuse to
/// start; its stderr, to say why.
pub(crate) fn refused_start(
    dir: &std::path::Path,
    cfg: &gse_server::config::ServerConfig,
) -> String {
    let path = dir.join("server.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let out = std::process::Command::new(gse_testkit::bin("gse-server"))
        .arg("run")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

pub(crate) fn loopback_config(dir: &std::path::Path) -> gse_server::config::ServerConfig {
    let certs = gse_core::certs::CertDir::new(dir.join("certs"));
    certs.init(&[], 30).unwrap();
    let mut cfg = gse_server::config::ServerConfig::with_defaults(
        dir.join("data"),
        certs.tls_files(gse_core::certs::CertKind::Server),
    );
    let free = || {
        format!("127.0.0.1:{}", gse_testkit::free_port())
            .parse()
            .unwrap()
    };
    cfg.api.listen = free();
    cfg.link.listen = free();
    cfg.data.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg
}

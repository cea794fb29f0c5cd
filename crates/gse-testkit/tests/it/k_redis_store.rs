//! The Redis state store against a real redis-server: the state store
//! conformance suite (the same one the embedded store passes), what
//! survives a Redis restart, and a clear "unavailable" while Redis is down.

use std::time::{Duration, Instant};

use gse_core::seams::state_store::conformance;
use gse_core::seams::state_store::prelude::*;
use gse_core::seams::{AppRecord, StoreErrorKind};
use gse_server::store::{RedisStore, RedisStoreConfig};
use gse_testkit::redis::RedisServer;

async fn store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisStoreConfig::at(server.url(), prefix))
        .await
        .expect("connect to the test redis")
}

#[tokio::test]
async fn the_redis_store_passes_the_state_store_conformance_suite() {
    let server = RedisServer::start(Some("s3cret")).await;
    conformance::all(&store(&server, "gse:").await).await;
    // Another prefix is another store on the same Redis.
    conformance::all(&store(&server, "other:").await).await;
}

/// The agent directory in Redis keeps the directory contract (epoch
/// fencing, releases, a dead node's release), and its claims survive a
/// Redis restart.
#[tokio::test]
async fn the_redis_directory_passes_the_directory_conformance_suite() {
    use gse_core::seams::AgentDirectory;
    use gse_core::seams::directory::conformance as dir_conformance;

    let mut server = RedisServer::start(None).await;
    let dir = store(&server, "gse:").await.directory();
    dir_conformance::all(&dir).await;

    let agent: gse_core::AgentKey = "0:10.9.0.9".parse().unwrap();
    let epoch = dir.claim(agent, "n1", &[]).await.unwrap();
    server.restart().await;
    let dir = store(&server, "gse:").await.directory();
    let at = dir
        .locate(agent)
        .await
        .unwrap()
        .expect("kept in the append-only file");
    assert_eq!((at.node_id.as_str(), at.epoch), ("n1", epoch));
    let newer = dir.claim(agent, "n2", &[]).await.unwrap();
    assert!(newer > epoch, "epochs keep growing after a restart");
}

#[tokio::test]
async fn records_survive_a_redis_restart_and_calls_fail_quickly_while_it_is_down() {
    let mut server = RedisServer::start(None).await;
    let store = store(&server, "gse:").await;
    store
        .put_app(AppRecord::with_secret("job", "pw"))
        .await
        .unwrap();

    server.stop();
    let started = Instant::now();
    let err = store.get_app("job").await.expect_err("redis is down");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed in {:?}",
        started.elapsed()
    );

    server.restart().await;
    // The connection manager reconnects on a later call.
    gse_testkit::eventually(
        "the store answers again",
        Duration::from_secs(15),
        || async {
            match store.get_app("job").await {
                Ok(Some(app)) if app.secret_hash.verify("pw") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// A node configured with `[store] redis` keeps its state there: agents
/// registered through it are records in Redis, and the API (which checks
/// app secrets in the store) answers from them; a node restarted after a
/// crash marks the agents it held offline.
#[tokio::test]
async fn a_node_with_store_redis_keeps_agents_and_apps_in_redis() {
    let redis = RedisServer::start(Some("pw")).await;
    let url = redis.url();
    let cluster = gse_testkit::Cluster::new();
    let mut server = cluster
        .server(gse_testkit::ServerOptions {
            customize: Some(std::sync::Arc::new(move |cfg| {
                cfg.store.redis = Some(url.clone());
                cfg.store.key_prefix = Some("node-test:".into());
            })),
            ..gse_testkit::ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(&server, gse_testkit::AgentOptions::ip("127.0.0.31"));
    server.api.wait_alive("127.0.0.31").await;

    let mut conn = redis
        .client(Some("pw"))
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let alive: Option<String> = redis::cmd("HGET")
        .arg("node-test:agent:0:127.0.0.31")
        .arg("alive")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        alive.as_deref(),
        Some("1"),
        "the agent's record is in Redis"
    );

    // A crashed node leaves its agents alive in Redis; started again, it
    // marks them offline (its old connections are gone) until they
    // register anew. The agent is stopped while the node is down, so only
    // the restart can mark it.
    server.kill9();
    drop(agent);
    let alive: Option<String> = redis::cmd("HGET")
        .arg("node-test:agent:0:127.0.0.31")
        .arg("alive")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(alive.as_deref(), Some("1"), "left alive by the crash");
    server.start_again().await;
    gse_testkit::eventually(
        "the agent offline after the node restart",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            async move {
                let alive: Option<String> = redis::cmd("HGET")
                    .arg("node-test:agent:0:127.0.0.31")
                    .arg("alive")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                match alive.as_deref() {
                    Some("0") => Ok(()),
                    other => Err(format!("alive = {other:?}")),
                }
            }
        },
    )
    .await;
}

/// An unreachable Redis at start: one clear error naming the address, and
/// a non-zero exit.
#[tokio::test]
async fn a_node_with_an_unreachable_redis_refuses_to_start_and_says_why() {
    let port = gse_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::k1_registry::loopback_config(dir.path());
    cfg.store.redis = Some(format!("redis://:hidden@127.0.0.1:{port}/"));
    let started = Instant::now();
    let stderr = crate::k1_registry::refused_start(dir.path(), &cfg);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("Redis state store"), "{stderr}");
    assert!(
        !stderr.contains("hidden"),
        "no password in the message: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fails promptly"
    );
}

/// A heartbeat batch larger than one script call is split across calls of
/// one pipeline and every beat lands.
#[tokio::test]
async fn a_large_heartbeat_batch_is_applied_whole() {
    use gse_core::seams::HeartbeatUpdate;

    let server = RedisServer::start(None).await;
    let store = store(&server, "gse:").await;
    let n = gse_server::store::redis::HEARTBEATS_PER_CALL * 2 + 7;
    let keys: Vec<gse_core::AgentKey> = (0..n)
        .map(|i| {
            format!("0:10.50.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap()
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        store
            .upsert_agent(online_record(*key, format!("beat-{i}")))
            .await
            .unwrap();
    }
    let beats: Vec<HeartbeatUpdate> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| HeartbeatUpdate {
            key: *key,
            at_ms: 1000 + i as u64,
            cpu_percent: 1.0,
            mem_bytes: i as u64,
            mem_percent: 2.0,
        })
        .collect();
    let started = Instant::now();
    store.record_heartbeats(&beats).await.unwrap();
    eprintln!("{n} heartbeats applied in {:?}", started.elapsed());
    let mut all = store.list_agents().await.unwrap();
    all.sort_by_key(|r| r.mem_bytes);
    assert_eq!(all.len(), n);
    for (i, rec) in all.iter().enumerate() {
        assert_eq!(
            (rec.last_seen_ms, rec.mem_bytes),
            (1000 + i as u64, i as u64)
        );
    }
}

/// A task's targets resolve in one MGET of `agent_of:K` strings; a record
/// saved by an older build has only its hash, and is still found by key
/// (and by id), so no agent becomes "unknown" across an upgrade.
#[tokio::test]
async fn agents_saved_before_agent_of_existed_are_still_identified_by_key() {
    use gse_core::AgentRef;

    let server = RedisServer::start(None).await;
    let store = store(&server, "gse:").await;
    let record = |last: u8| {
        online_record(
            format!("0:10.60.0.{last}").parse().unwrap(),
            format!("upgrade-{last}"),
        )
    };
    for last in 1..=3 {
        store.upsert_agent(record(last)).await.unwrap();
    }
    // Agent 2 as an older build left it: no `agent_of:K`.
    let mut raw = server
        .client(None)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let removed: i64 = redis::cmd("DEL")
        .arg("gse:agent_of:0:10.60.0.2")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(removed, 1, "upsert writes agent_of:K");

    let refs = [
        AgentRef::Key("0:10.60.0.1".parse().unwrap()),
        AgentRef::Key("0:10.60.0.2".parse().unwrap()),
        AgentRef::Id("upgrade-3".into()),
        AgentRef::Key("0:10.60.0.9".parse().unwrap()),
        AgentRef::Id("upgrade-2".into()),
    ];
    let found: Vec<Option<String>> = store
        .identify_agents(&refs)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.map(|k| format!("{} {}", k.key, k.agent_id)))
        .collect();
    assert_eq!(
        found,
        [
            Some("0:10.60.0.1 upgrade-1".to_string()),
            Some("0:10.60.0.2 upgrade-2".to_string()),
            Some("0:10.60.0.3 upgrade-3".to_string()),
            None,
            Some("0:10.60.0.2 upgrade-2".to_string()),
        ]
    );
}

/// An agent registered on node "n1" and online.
fn online_record(key: gse_core::AgentKey, agent_id: String) -> gse_core::seams::AgentRecord {
    gse_core::seams::AgentRecord {
        key,
        agent_id,
        version: "1".into(),
        hostname: "h".into(),
        os_type: "linux".into(),
        run_mode: 1,
        zone: String::new(),
        start_time_s: 1,
        node_id: "n1".into(),
        parent_ip: "127.0.0.1".into(),
        parent_port: 28668,
        peer_addr: String::new(),
        alive: true,
        connected_at_ms: 1,
        last_seen_ms: 1,
        cpu_percent: 0.0,
        mem_bytes: 0,
        mem_percent: 0.0,
        p2p_addr: String::new(),
    }
}

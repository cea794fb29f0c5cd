//! The Redis store through Redis Sentinel (`[store] redis_sentinels` +
//! `redis_master_name`) against real redis-server and sentinel processes:
//! the conformance suite through a sentinel-resolved master, a failover
//! followed without a restart and without losing what was written, clear
//! errors when the sentinels cannot be reached or do not know the master,
//! and a node configured with the Sentinel keys.

use std::time::{Duration, Instant};

use gse_core::seams::state_store::conformance;
use gse_core::seams::state_store::prelude::*;
use gse_core::seams::{AgentDirectory, AppRecord};
use gse_server::store::{RedisStore, RedisStoreConfig, SentinelConfig};
use gse_testkit::redis::RedisServer;
use gse_testkit::sentinel::Sentinel;

fn sentinel_config(
    master: &RedisServer,
    sentinels: Vec<String>,
    name: &str,
    sentinel_password: Option<&str>,
) -> RedisStoreConfig {
    RedisStoreConfig {
        // Only the password and db are used: the host is never dialled.
        url: match master.password() {
            Some(p) => format!("redis://:{p}@not-the-master/"),
            None => "redis://not-the-master/".into(),
        },
        key_prefix: "gse:".into(),
        sentinel: Some(SentinelConfig {
            addrs: sentinels,
            master_name: name.into(),
            password: sentinel_password.map(str::to_string),
        }),
    }
}

async fn exists(server: &RedisServer, key: &str) -> Result<bool, String> {
    let mut conn = server
        .client(server.password())
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<bool>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_sentinel_resolved_store_passes_the_state_store_conformance_suite() {
    let master = RedisServer::start(Some("s3cret")).await;
    let sentinel = Sentinel::start(&master, "gse", Some("sentinel-pw")).await;
    // An unreachable sentinel listed first: the next one answers.
    let dead = format!("127.0.0.1:{}", gse_testkit::free_port());
    let config = sentinel_config(
        &master,
        vec![dead, sentinel.addr()],
        "gse",
        Some("sentinel-pw"),
    );
    let store = RedisStore::connect(&config)
        .await
        .expect("the master through the sentinel");
    assert_eq!(store.addr(), format!("127.0.0.1:{}", master.port));
    conformance::all(&store).await;
}

/// With Sentinel, `redis` gives the master's ACL user, password and db
/// (its host is not dialled).
#[tokio::test]
async fn the_acl_user_and_db_of_store_redis_apply_to_the_sentinel_master() {
    let master = RedisServer::start(Some("admin")).await;
    let mut conn = master
        .client(Some("admin"))
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "gse", "on", ">gse-pw", "~*", "&*", "+@all"][..])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let sentinel = Sentinel::start(&master, "gse", None).await;
    let mut config = sentinel_config(&master, vec![sentinel.addr()], "gse", None);
    config.url = "redis://gse:gse-pw@not-the-master/3".into();
    let store = RedisStore::connect(&config).await.expect("the ACL user");
    store
        .put_app(AppRecord::with_secret("acl", "pw"))
        .await
        .unwrap();
    redis::cmd("SELECT")
        .arg(3)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let in_db3: bool = redis::cmd("EXISTS")
        .arg("gse:app:acl")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(in_db3, "written in database 3");

    config.url = "redis://gse:wrong@not-the-master/3".into();
    let err = RedisStore::connect(&config)
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(!err.to_string().contains("wrong"), "no password: {err}");
}

/// A master, one replica and one sentinel: after a failover the store
/// writes to the promoted replica within 30 s, without a restart, and what
/// was written before is still there. The agent directory, which shares
/// the store's connection, follows too.
#[tokio::test]
async fn a_sentinel_failover_is_followed_without_a_restart_and_nothing_is_lost() {
    let master = RedisServer::start(Some("pw")).await;
    let replica = RedisServer::start_replica(&master).await;
    let sentinel = Sentinel::start(&master, "gse", None).await;
    let store = RedisStore::connect(&sentinel_config(
        &master,
        vec![sentinel.addr()],
        "gse",
        None,
    ))
    .await
    .expect("connect through the sentinel");
    let dir = store.directory();
    store
        .put_app(AppRecord::with_secret("before", "pw"))
        .await
        .unwrap();
    let agent: gse_core::AgentKey = "0:10.9.0.9".parse().unwrap();
    let epoch = dir.claim(agent, "n1", &[]).await.unwrap();
    // Replication is asynchronous: the failover must not start before the
    // replica has the writes, or they would be lost by Redis, not by us.
    gse_testkit::eventually(
        "the replica has the writes",
        Duration::from_secs(10),
        || async {
            match exists(&replica, "gse:app:before").await? {
                true => Ok(()),
                false => Err("not yet".into()),
            }
        },
    )
    .await;

    let promoted = sentinel.failover().await;
    assert_eq!(promoted, replica.port);
    let started = Instant::now();
    let new_master = format!("127.0.0.1:{}", replica.port);
    gse_testkit::eventually(
        "the store follows the new master",
        Duration::from_secs(30),
        || {
            let store = &store;
            let new_master = &new_master;
            async move {
                match store.addr() {
                    addr if &addr == new_master => Ok(()),
                    addr => Err(format!("still on {addr}")),
                }
            }
        },
    )
    .await;
    writes_again(
        &store,
        "the store writes to the new master",
        Duration::from_secs(30).saturating_sub(started.elapsed()),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        exists(&replica, "gse:app:after").await.unwrap(),
        "written on the promoted replica"
    );
    assert!(
        store.get_app("before").await.unwrap().is_some(),
        "what was written before the failover is still there"
    );
    let at = dir.locate(agent).await.unwrap().expect("claim kept");
    assert_eq!((at.node_id.as_str(), at.epoch), ("n1", epoch));
    let newer = dir.claim(agent, "n2", &[]).await.unwrap();
    assert!(newer > epoch, "the directory writes to the new master too");
}

/// The master dies (SIGKILL, nothing announced to us): calls fail as
/// "unavailable", the sentinel promotes the replica once the master is
/// down for its down-after, and the store writes there within 30 s.
#[tokio::test]
async fn a_killed_master_is_replaced_and_the_store_follows() {
    let mut master = RedisServer::start(None).await;
    let replica = RedisServer::start_replica(&master).await;
    let sentinel = Sentinel::start(&master, "gse", None).await;
    let store = RedisStore::connect(&sentinel_config(
        &master,
        vec![sentinel.addr()],
        "gse",
        None,
    ))
    .await
    .expect("connect through the sentinel");
    store
        .put_app(AppRecord::with_secret("before", "pw"))
        .await
        .unwrap();
    gse_testkit::eventually(
        "the replica has the write",
        Duration::from_secs(10),
        || async {
            match exists(&replica, "gse:app:before").await? {
                true => Ok(()),
                false => Err("not yet".into()),
            }
        },
    )
    .await;

    master.kill();
    let started = Instant::now();
    let err = store
        .put_app(AppRecord::with_secret("during", "pw"))
        .await
        .expect_err("the master is gone");
    assert!(err.is_retryable(), "{err}");
    writes_again(
        &store,
        "the store writes to the promoted replica",
        Duration::from_secs(30),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(store.addr(), format!("127.0.0.1:{}", replica.port));
    assert!(exists(&replica, "gse:app:after").await.unwrap());
    assert!(store.get_app("before").await.unwrap().is_some());
}

/// No sentinel reachable, or a sentinel that does not know the master:
/// one quick error naming the sentinels and the master name, without the
/// passwords.
#[tokio::test]
async fn unreachable_sentinels_and_an_unknown_master_are_clear_errors() {
    let master = RedisServer::start(Some("hidden")).await;
    let a = format!("127.0.0.1:{}", gse_testkit::free_port());
    let b = format!("127.0.0.1:{}", gse_testkit::free_port());
    let started = Instant::now();
    let err = RedisStore::connect(&sentinel_config(
        &master,
        vec![a.clone(), b.clone()],
        "gse",
        Some("also-hidden"),
    ))
    .await
    .err()
    .expect("no sentinel listens there");
    let msg = err.to_string();
    assert!(
        msg.contains(&a) && msg.contains(&b) && msg.contains("`gse`"),
        "{msg}"
    );
    assert!(msg.contains("redis_sentinels"), "names the key: {msg}");
    assert!(!msg.contains("hidden"), "no password: {msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let sentinel = Sentinel::start(&master, "gse", None).await;
    let err = RedisStore::connect(&sentinel_config(
        &master,
        vec![sentinel.addr()],
        "other-name",
        None,
    ))
    .await
    .err()
    .expect("the sentinel does not monitor other-name");
    let msg = err.to_string();
    assert!(
        msg.contains("`other-name`") && msg.contains(&sentinel.addr()),
        "{msg}"
    );
}

/// A node configured with `redis_sentinels` + `redis_master_name` keeps
/// its state in the master the sentinel names and serves the API; after
/// a Sentinel failover it writes to the new master without a restart (an
/// agent registering then is recorded there and seen alive).
#[tokio::test]
async fn a_node_with_sentinel_keys_serves_the_api_and_follows_a_failover() {
    let master = RedisServer::start(Some("pw")).await;
    let replica = RedisServer::start_replica(&master).await;
    let sentinel = Sentinel::start(&master, "gse", None).await;
    let addr = sentinel.addr();
    let cluster = gse_testkit::Cluster::new();
    let server = cluster
        .server(gse_testkit::ServerOptions {
            customize: Some(std::sync::Arc::new(move |cfg| {
                // Only the password: the sentinel names the master.
                cfg.store.redis = Some("redis://:pw@unused/".into());
                cfg.store.redis_sentinels = vec![addr.clone()];
                cfg.store.redis_master_name = Some("gse".into());
                cfg.store.key_prefix = Some("sentinel-node:".into());
            })),
            ..gse_testkit::ServerOptions::default()
        })
        .await;
    let _first = cluster.agent(&server, gse_testkit::AgentOptions::ip("127.0.0.32"));
    server.api.wait_alive("127.0.0.32").await;
    assert!(
        exists(&master, "sentinel-node:agent:0:127.0.0.32")
            .await
            .unwrap(),
        "the agent's record is in the master"
    );

    sentinel.failover().await;
    let _second = cluster.agent(&server, gse_testkit::AgentOptions::ip("127.0.0.33"));
    server.api.wait_alive("127.0.0.33").await;
    assert!(
        exists(&replica, "sentinel-node:agent:0:127.0.0.33")
            .await
            .unwrap(),
        "registered after the failover: recorded in the promoted replica"
    );
    server.api.wait_alive("127.0.0.32").await;
}

/// A node whose sentinels cannot be reached refuses to start, naming them
/// and the master name, with a non-zero exit.
#[tokio::test]
async fn a_node_with_unreachable_sentinels_refuses_to_start_and_says_why() {
    let port = gse_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::k1_registry::loopback_config(dir.path());
    cfg.store.redis_sentinels = vec![format!("127.0.0.1:{port}")];
    cfg.store.redis_master_name = Some("gse-master".into());
    let started = Instant::now();
    let stderr = crate::k1_registry::refused_start(dir.path(), &cfg);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("`gse-master`"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fails promptly"
    );
}

/// Waits (up to `within`) until `store` writes again: an app record
/// `after` once it follows the new master.
async fn writes_again(store: &RedisStore, what: &str, within: Duration) {
    gse_testkit::eventually(what, within, || async {
        store
            .put_app(AppRecord::with_secret("after", "pw"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

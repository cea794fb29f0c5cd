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
    RedisStore::connect(&RedisStoreConfig {
        url: server.url(),
        key_prefix: prefix.into(),
    })
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

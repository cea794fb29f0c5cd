//! `get_agent_snapshot` through the whole router: id forms, order, unknown
//! and silent agents, `latest_only`, and a node without the data role.

use std::sync::Arc;

use axum::http::StatusCode;
use gse_core::seams::AppRecord;
use gse_core::seams::state_store::prelude::*;
use serde_json::{Value, json};

use super::{AGENT_UNKNOWN, NO_SNAPSHOT};
use crate::role::api::tests::{APP, FakeStore, SECRET, post, record, send};
use crate::role::api::{ApiConfig, ApiContext, router};
use crate::role::data::snapshot::{SnapshotCache, SnapshotCacheConfig};

const PATH: &str = "/api/v2/cluster/get_agent_snapshot";

/// A store that knows 10.0.0.1 (`id-1`), 10.0.0.2 (`id-2`) and 10.0.0.3
/// (`id-3`, silent); the cache has snapshots of the first two.
async fn app(with_cache: bool) -> axum::Router {
    let store = FakeStore::default();
    store
        .put_app(AppRecord::with_secret(APP, SECRET))
        .await
        .unwrap();
    for (ip, id) in [
        ("10.0.0.1", "id-1"),
        ("10.0.0.2", "id-2"),
        ("10.0.0.3", "id-3"),
    ] {
        store.upsert_agent(record(ip, id, true)).await.unwrap();
    }
    let cache = SnapshotCache::new(1100001, SnapshotCacheConfig::default());
    for t in [1000, 2000, 3000] {
        let snap = json!({"time_ms": t, "ip": "10.0.0.1", "cpu": {"count": 2}});
        cache
            .insert("0:10.0.0.1", snap.to_string().as_bytes())
            .unwrap();
    }
    cache
        .insert("0:10.0.0.2", br#"{"time_ms": 5, "ip": "10.0.0.2"}"#)
        .unwrap();
    let ctx = ApiContext {
        snapshots: with_cache.then(|| Arc::new(cache)),
        ..ApiContext::new(Arc::new(store), ApiConfig::default())
    };
    router(ctx)
}

async fn call(with_cache: bool, body: Value) -> (StatusCode, Value) {
    send(app(with_cache).await, post(PATH, body.to_string())).await
}

fn times(entry: &Value) -> Vec<u64> {
    entry["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["time_ms"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn every_requested_agent_gets_an_entry_in_request_order() {
    let ids = ["id-2", "0:10.0.0.1", "0:10.0.0.9", "id-3", "no-such-id"];
    let (status, body) = call(true, json!({ "agent_id_list": ids })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["result"].clone(), body["code"].clone()),
        (json!(true), json!(0))
    );
    let data = body["data"].as_array().unwrap();
    let sent: Vec<&str> = data
        .iter()
        .map(|e| e["bk_agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ids);

    // A real id resolved through the store; the snapshot as the agent sent it.
    assert_eq!(data[0]["agent_key"], "0:10.0.0.2");
    assert_eq!(
        (data[0]["code"].clone(), data[0]["message"].clone()),
        (json!(0), json!(""))
    );
    assert_eq!(
        data[0]["snapshots"],
        json!([{"time_ms": 5, "ip": "10.0.0.2"}])
    );
    // cloud:ip, oldest first.
    assert_eq!(times(&data[1]), [1000, 2000, 3000]);
    assert_eq!(data[1]["snapshots"][0]["cpu"]["count"], 2);

    // Unknown agents, in both forms: an empty list and why.
    for unknown in [&data[2], &data[4]] {
        assert_eq!(unknown["code"], AGENT_UNKNOWN, "{unknown}");
        assert_eq!(unknown["snapshots"], json!([]));
        assert!(unknown["message"].as_str().unwrap().contains("not known"));
    }
    assert_eq!(data[2]["agent_key"], "0:10.0.0.9");
    assert_eq!(data[4]["agent_key"], "");
    // Known but silent: a different code, naming the window and the causes.
    assert_eq!(data[3]["code"], NO_SNAPSHOT);
    assert_eq!(data[3]["snapshots"], json!([]));
    let msg = data[3]["message"].as_str().unwrap();
    assert!(
        msg.contains("1m") && msg.contains("snapshot_interval"),
        "{msg}"
    );

    let mut keys: Vec<&str> = data[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["agent_key", "bk_agent_id", "code", "message", "snapshots"]
    );
}

#[tokio::test]
async fn latest_only_gives_the_newest_snapshot() {
    let body = json!({ "agent_id_list": ["0:10.0.0.1", "id-1"], "latest_only": true });
    let (_, body) = call(true, body).await;
    for entry in body["data"].as_array().unwrap() {
        assert_eq!(times(entry), [3000], "{entry}");
    }
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let (status, body) = call(true, json!({ "agent_id_list": ["0:10.0.0.1", "bad id!"] })).await;
    let message = crate::role::api::tests::bad_request_message(status, &body, "agent_id_list");
    assert!(message.contains("agent_id_list[1]"), "{body}");

    let (status, body) = call(true, json!({ "agent_id_list": [], "latest_only": "yes" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("latest_only"),
        "{body}"
    );

    let (status, body) = call(true, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("agent_id_list"),
        "{body}"
    );

    let (_, body) = call(true, json!({ "agent_id_list": [] })).await;
    assert_eq!(body["data"], json!([]));
}

#[tokio::test]
async fn a_node_without_the_data_role_says_so() {
    let (status, body) = call(false, json!({ "agent_id_list": ["0:10.0.0.1"] })).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(1000503))
    );
    assert!(
        body["message"].as_str().unwrap().contains("data role"),
        "{body}"
    );
}

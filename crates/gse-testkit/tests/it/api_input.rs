//! A3 and input bounds over real HTTP: authentication failures say which,
//! bad input is a clear 4xx, never a panic or a hang.

use std::time::{Duration, Instant};

use gse_testkit::{Cluster, ServerOptions};
use serde_json::{Value, json};

#[tokio::test]
async fn a3_auth_and_bad_input_are_clear_errors() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;
    let path = "/api/c/compapi/v2/gse/get_agent_status/";
    let hosts = json!([{"ip": "127.0.0.1", "bk_cloud_id": 0}]);

    let envelope_err = |(status, v): (u16, Value)| {
        assert!((400..500).contains(&status), "status {status}: {v}");
        assert_eq!(v["result"], false, "{v}");
        assert_ne!(v["code"], 0, "{v}");
        (
            v["code"].as_i64().unwrap(),
            v["message"].as_str().unwrap().to_string(),
        )
    };

    // No credentials, unknown app, wrong secret: three different answers.
    let (_, none) = envelope_err(
        api.send(path, json!({"hosts": hosts}).to_string().into_bytes(), &[])
            .await,
    );
    let body = json!({"bk_app_code": "nobody", "bk_app_secret": "x", "hosts": hosts});
    let (unknown_code, unknown) =
        envelope_err(api.send(path, body.to_string().into_bytes(), &[]).await);
    assert!(unknown.contains("nobody"), "{unknown}");
    let body = json!({"bk_app_code": api.app_code, "bk_app_secret": "wrong", "hosts": hosts});
    let (wrong_code, wrong) =
        envelope_err(api.send(path, body.to_string().into_bytes(), &[]).await);
    assert!(
        wrong.contains("secret") && !wrong.contains("wrong\""),
        "{wrong}"
    );
    assert_ne!(unknown_code, wrong_code);
    assert!(!none.is_empty());

    // Malformed JSON and a missing field.
    let (_, msg) = envelope_err(api.send(path, b"{\"hosts\": [".to_vec(), &[]).await);
    assert!(msg.contains("line"), "{msg}");
    let (_, msg) = envelope_err(api.post(path, json!({"bk_supplier_account": "0"})).await);
    assert!(msg.contains("hosts"), "{msg}");

    // 100k hosts: refused quickly with a 4xx, and the server still answers.
    let many: Vec<Value> = (0..100_000).map(|i| json!({"ip": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), "bk_cloud_id": 0})).collect();
    let started = Instant::now();
    let (status, v) = api.post(path, json!({"hosts": many})).await;
    assert!((400..500).contains(&status), "status {status}: {v}");
    assert!(v["message"].as_str().unwrap().contains("100000"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(api.alive(0, "127.0.0.1").await, 0);
}

/// Issue 13 item 4: a node serves its OpenAPI document without
/// credentials, and it is the committed `docs/openapi.json`.
#[tokio::test]
async fn the_openapi_document_is_served_and_is_the_committed_one() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
    )
    .expect("docs/openapi.json");
    for path in ["/api/openapi.json", "/api/bk-gse/prod/api/openapi.json/"] {
        let (status, text) = server.api.get(path).await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        assert!(text == committed, "{path}: the served document differs");
    }
    let doc: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every path in it answers as the document says (POST for endpoints).
    let (status, v) = server.api.send("/api/openapi.json", Vec::new(), &[]).await;
    assert_eq!((status, v["code"].as_i64()), (405, Some(1000405)), "{v}");
}

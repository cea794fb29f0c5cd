//! Unit tests of the API role against an in-memory fake store, through the
//! whole router (`oneshot`), so paths, auth, envelope and shapes are proven
//! together. Real-process tests live in gse-testkit.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gse_core::identity::AgentKey;
use gse_core::seams::state_store::prelude::*;
use gse_core::seams::{AgentRecord, AppRecord};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiConfig, ApiContext, router};

pub(super) use super::fake_store::FakeStore;
use super::fake_store::Fault;

pub(super) const APP: &str = "bk_job";
pub(super) const SECRET: &str = "s3cret";
const REAL_ID: &str = "0100005254008ed86116666614661851";

pub(super) fn record(ip: &str, agent_id: &str, alive: bool) -> AgentRecord {
    AgentRecord {
        key: AgentKey::new(0, ip.parse().unwrap()),
        agent_id: agent_id.to_string(),
        version: "0.1.0".into(),
        hostname: "host-a".into(),
        os_type: "linux".into(),
        run_mode: 1,
        zone: String::new(),
        start_time_s: 1_700_000_000,
        node_id: "node-1".into(),
        parent_ip: "10.0.0.2".into(),
        parent_port: 28668,
        peer_addr: format!("{ip}:40000"),
        alive,
        connected_at_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_005_000,
        cpu_percent: 12.345,
        mem_bytes: 8 * 1024 * 1024,
        mem_percent: 0.5,
        p2p_addr: String::new(),
    }
}

/// A router over a store with one app, one live agent (10.0.0.1, REAL_ID)
/// and one offline agent (10.0.0.3).
pub(super) async fn app_with(config: ApiConfig) -> axum::Router {
    app_with_fault(config, None).await
}

async fn app_with_fault(config: ApiConfig, list_fault: Option<Fault>) -> axum::Router {
    let store = FakeStore::with_list_fault(list_fault);
    store
        .put_app(AppRecord::with_secret(APP, SECRET))
        .await
        .unwrap();
    store
        .upsert_agent(record("10.0.0.1", REAL_ID, true))
        .await
        .unwrap();
    store
        .upsert_agent(record("10.0.0.3", "offline-agent", false))
        .await
        .unwrap();
    router(ApiContext::new(Arc::new(store), config))
}

async fn app() -> axum::Router {
    app_with(ApiConfig::default()).await
}

fn auth_header() -> String {
    json!({ "bk_app_code": APP, "bk_app_secret": SECRET, "bk_username": "admin" }).to_string()
}

pub(super) fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .header("x-bkapi-authorization", auth_header())
        .body(body.into())
        .unwrap()
}

/// Sends `req` and returns the status and the parsed envelope.
/// Asserts that a call was refused as a bad request (HTTP 400, code
/// 1000400) and returns the message naming the field; `context` goes into
/// the failure text.
pub(super) fn bad_request_message<'a>(
    status: StatusCode,
    env: &'a Value,
    context: &str,
) -> &'a str {
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(1000400)),
        "{context}: {env}"
    );
    env["message"].as_str().unwrap()
}

pub(super) async fn send(app: axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let response = app.oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    (status, body)
}

async fn call(path: &str, body: Value) -> (StatusCode, Value) {
    send(app().await, post(path, body.to_string())).await
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

// === paths, methods, ops endpoints ===

#[tokio::test]
async fn slash_forms_and_gateway_prefix_all_reach_the_endpoint() {
    for path in [
        "/api/v2/cluster/list_agent_state",
        "/api/v2/cluster/list_agent_state/",
        "/api/bk-gse/prod/api/v2/cluster/list_agent_state",
        "/api/bk-gse/prod/api/v2/cluster/list_agent_state/",
    ] {
        let (status, body) = call(path, json!({ "agent_id_list": ["0:10.0.0.1"] })).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["code"], 0, "{path}");
        assert_eq!(body["result"], true);
        assert_eq!(body["message"], "success");
    }
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_in_the_envelope() {
    let (status, body) = call("/api/v2/cluster/nope", json!({})).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::NOT_FOUND, Some(1000404))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/api/v2/cluster/nope")
    );
    assert_eq!(body["result"], false);

    let req = Request::get("/api/v2/cluster/list_agent_state/")
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(app().await, req).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::METHOD_NOT_ALLOWED, Some(1000405))
    );
}

#[tokio::test]
async fn healthz_needs_no_credentials_and_metrics_is_404_without_a_recorder() {
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    let (status, body) = send(app().await, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"result": true, "code": 0, "message": "ok", "data": {"version": gse_core::VERSION}})
    );

    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let (status, body) = send(app().await, req).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::NOT_FOUND, Some(1000404))
    );
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let mut req = post("/api/v2/cluster/list_agents", "{}");
    req.headers_mut()
        .insert("x-bkapi-request-id", "abc-123".parse().unwrap());
    let response = app().await.oneshot(req).await.unwrap();
    assert_eq!(response.headers()["x-bkapi-request-id"], "abc-123");

    let response = app().await.oneshot(post("/nope", "{}")).await.unwrap();
    let id = response.headers()["x-bkapi-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

// === authentication ===

fn unauthenticated(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn body_and_app_headers_are_accepted_as_credentials() {
    let body = json!({ "bk_app_code": APP, "bk_app_secret": SECRET, "bk_token": "x", "hosts": [] });
    let (status, env) = send(
        app().await,
        unauthenticated("/api/c/compapi/v2/gse/get_agent_status/", body),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );

    let mut req = unauthenticated("/api/v2/cluster/list_agents", json!({}));
    req.headers_mut()
        .insert("x-bkapi-app-code", APP.parse().unwrap());
    req.headers_mut()
        .insert("x-bkapi-app-secret", SECRET.parse().unwrap());
    req.headers_mut()
        .insert("x-bk-tenant-id", "default".parse().unwrap());
    let (status, env) = send(app().await, req).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
}

#[tokio::test]
async fn missing_unknown_and_wrong_credentials_have_their_own_codes() {
    let path = "/api/v2/cluster/list_agents";
    let (status, env) = send(app().await, unauthenticated(path, json!({}))).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(1000401))
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("X-Bkapi-Authorization")
    );

    let body = json!({ "bk_app_code": "ghost", "bk_app_secret": "x" });
    let (status, env) = send(app().await, unauthenticated(path, body)).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(1000402))
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("\"ghost\" is not registered")
    );

    let mut req = unauthenticated(path, json!({}));
    let header = json!({ "bk_app_code": APP, "bk_app_secret": "guess-me" }).to_string();
    req.headers_mut()
        .insert("x-bkapi-authorization", header.parse().unwrap());
    let (status, env) = send(app().await, req).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(1000403))
    );
    assert!(!env["message"].as_str().unwrap().contains("guess-me"));
}

// === request validation and bounds ===

#[tokio::test]
async fn malformed_json_names_line_and_column() {
    let (status, env) = send(
        app().await,
        post(
            "/api/v2/cluster/list_agents",
            "{\n  \"alive_only\": true,,\n}",
        ),
    )
    .await;
    let message = bad_request_message(status, &env, "malformed JSON");
    assert!(message.contains("line 2 column"), "{message}");
}

#[tokio::test]
async fn missing_hosts_and_bad_fields_are_named() {
    let path = "/api/c/compapi/v2/gse/get_agent_status";
    let (status, env) = call(path, json!({ "bk_supplier_account": "0" })).await;
    let message = bad_request_message(status, &env, "no hosts");
    assert!(message.starts_with("hosts: missing"), "{env}");

    let hosts = json!([{"ip": "10.0.0.1", "bk_cloud_id": 0}, {"ip": "x", "bk_cloud_id": 0}]);
    let (_, env) = call(path, json!({ "hosts": hosts })).await;
    assert_eq!(env["message"], "hosts[1].ip: \"x\" is not an IP address");

    let (_, env) = call(
        path,
        json!({ "hosts": [{"ip": "10.0.0.1", "bk_cloud_id": -1}] }),
    )
    .await;
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .starts_with("hosts[0].bk_cloud_id: -1"),
        "{env}"
    );

    let (_, env) = call(
        "/api/v2/cluster/list_agent_state",
        json!({ "agent_id_list": ["0:10.0.0.1", "a b"] }),
    )
    .await;
    assert_eq!(env["code"], 1000400);
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .starts_with("agent_id_list[1]:"),
        "{env}"
    );
}

#[tokio::test]
async fn too_many_hosts_is_413_before_any_is_looked_at() {
    let hosts: Vec<Value> = (0..100_000)
        .map(|i| json!({"ip": format!("10.{}.{}.1", i / 256 % 256, i % 256), "bk_cloud_id": 0}))
        .collect();
    let started = std::time::Instant::now();
    let (status, env) = call(
        "/api/c/compapi/v2/gse/get_agent_info/",
        json!({ "hosts": hosts }),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413))
    );
    let message = env["message"].as_str().unwrap();
    for part in [
        "100000",
        "5000",
        "api.max_hosts_per_call",
        "split the request",
    ] {
        assert!(message.contains(part), "{message}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn oversize_body_gets_the_envelope() {
    let config = ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    };
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let mut req = post("/api/v2/cluster/list_agents", big.clone());
    req.headers_mut().insert("content-length", big.len().into());
    let (status, env) = send(app_with(config.clone()).await, req).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413))
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("api.max_body_bytes")
    );

    // Without Content-Length (a streamed body) the limit still holds.
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, env) = send(
        app_with(config).await,
        post("/api/v2/cluster/list_agents", Body::from_stream(chunks)),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413))
    );
}

// === answers ===

#[tokio::test]
async fn v1_get_agent_status_lists_every_host_with_exact_keys() {
    let hosts = json!([{"ip": "10.0.0.1", "bk_cloud_id": 0}, {"ip": "10.0.0.3", "bk_cloud_id": 0}, {"ip": "10.0.0.9", "bk_cloud_id": 0}]);
    let (_, env) = call(
        "/api/c/compapi/v2/gse/get_agent_status/",
        json!({ "bk_supplier_account": "0", "hosts": hosts }),
    )
    .await;
    let data = &env["data"];
    assert_eq!(keys(data), ["0:10.0.0.1", "0:10.0.0.3", "0:10.0.0.9"]);
    assert_eq!(
        data["0:10.0.0.1"],
        json!({"ip": "10.0.0.1", "bk_cloud_id": 0, "bk_agent_alive": 1})
    );
    assert_eq!(data["0:10.0.0.3"]["bk_agent_alive"], 0);
    assert_eq!(data["0:10.0.0.9"]["bk_agent_alive"], 0);
}

#[tokio::test]
async fn v1_get_agent_info_has_the_five_seed_keys_and_omits_unknown_hosts() {
    let hosts = json!([{"ip": "10.0.0.1", "bk_cloud_id": 0}, {"ip": "10.0.0.9", "bk_cloud_id": 0}]);
    let (_, env) = call(
        "/api/c/compapi/v2/gse/get_agent_info",
        json!({ "hosts": hosts }),
    )
    .await;
    assert_eq!(keys(&env["data"]), ["0:10.0.0.1"]);
    let info = &env["data"]["0:10.0.0.1"];
    assert_eq!(
        keys(info),
        ["bk_cloud_id", "ip", "parent_ip", "parent_port", "version"]
    );
    assert_eq!(
        info,
        &json!({"ip": "10.0.0.1", "version": "0.1.0", "bk_cloud_id": 0, "parent_ip": "10.0.0.2", "parent_port": 28668})
    );
}

#[tokio::test]
async fn list_agent_state_echoes_legacy_and_real_ids() {
    let ids = json!(["0:10.0.0.1", REAL_ID, "0:10.0.0.3", "0:10.0.0.9"]);
    let (_, env) = call(
        "/api/v2/cluster/list_agent_state",
        json!({ "agent_id_list": ids }),
    )
    .await;
    assert_eq!(
        env["data"],
        json!([
            {"bk_agent_id": "0:10.0.0.1", "bk_cloud_id": 0, "version": "0.1.0", "run_mode": 1, "status_code": 2},
            {"bk_agent_id": REAL_ID, "bk_cloud_id": 0, "version": "0.1.0", "run_mode": 1, "status_code": 2},
            {"bk_agent_id": "0:10.0.0.3", "bk_cloud_id": 0, "version": "0.1.0", "run_mode": 1, "status_code": -2},
        ])
    );
}

#[tokio::test]
async fn none_known_is_1011003_with_an_empty_list() {
    for path in [
        "/api/v2/cluster/list_agent_state/",
        "/api/v2/cluster/list_agent_info/",
    ] {
        let (status, env) = call(path, json!({ "agent_id_list": ["0:10.9.9.9", "nobody"] })).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                env["result"].clone(),
                env["code"].clone(),
                env["data"].clone()
            ),
            (json!(false), json!(1011003), json!([]))
        );
        assert!(
            env["message"]
                .as_str()
                .unwrap()
                .contains("2 requested agents")
        );
    }
}

#[tokio::test]
async fn list_agent_info_has_every_field_nodeman_reads() {
    let (_, env) = call(
        "/api/v2/cluster/list_agent_info",
        json!({ "agent_id_list": ["0:10.0.0.1", "0:10.0.0.3"] }),
    )
    .await;
    let live = &env["data"][0];
    assert_eq!(
        live,
        &json!({
            "code": 0, "message": "", "bk_agent_id": "0:10.0.0.1", "bk_cloud_id": 0, "bk_host_ip": "10.0.0.1",
            "bk_os_type": "linux", "report_time": 1_700_000_005_000u64, "parent_ip": "10.0.0.2", "parent_port": 28668,
            "version": "0.1.0", "cpu_rate": 12.35, "mem_rate": 0.5, "start_time": 1_700_000_000, "run_mode": 1,
            "status_code": 2, "status": "running", "last_status_code": 2, "last_status": "running", "remark": ""
        })
    );
    assert_eq!(
        (
            env["data"][1]["status_code"].clone(),
            env["data"][1]["status"].clone()
        ),
        (json!(-2), json!("offline"))
    );
}

#[tokio::test]
async fn list_agents_sorts_and_filters() {
    let (_, env) = call("/api/v2/cluster/list_agents/", json!({})).await;
    assert_eq!(env["data"]["total"], 2);
    let agents = env["data"]["agents"].as_array().unwrap();
    assert_eq!(agents[0]["agent_key"], "0:10.0.0.1");
    assert_eq!(agents[0]["bk_agent_id"], REAL_ID);
    assert_eq!(agents[0]["mem_bytes"], 8 * 1024 * 1024);
    assert_eq!(agents[1]["agent_key"], "0:10.0.0.3");

    let (_, env) = call(
        "/api/v2/cluster/list_agents/",
        json!({ "alive_only": true }),
    )
    .await;
    assert_eq!(env["data"]["total"], 1);
}

#[tokio::test]
async fn metrics_renders_prometheus_text_when_a_handle_is_given() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("gse_api_test_total").increment(1)
    });
    let store = Arc::new(FakeStore::default());
    let app = router(ApiContext {
        metrics: Some(handle),
        ..ApiContext::new(store, ApiConfig::default())
    });
    let response = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&text).contains("gse_api_test_total 1"));
}

#[tokio::test]
async fn a_hanging_store_times_out_with_408_a_failing_one_is_1000500_and_a_down_one_1000503() {
    let config = ApiConfig {
        request_timeout: std::time::Duration::from_millis(50),
        ..ApiConfig::default()
    };
    let app = app_with_fault(config, Some(Fault::Hang)).await;
    let response = app
        .oneshot(post("/api/v2/cluster/list_agents", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let env: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(env["code"], 1000408, "in the envelope: {env}");

    let app = app_with_fault(ApiConfig::default(), Some(Fault::Fail)).await;
    let (status, env) = send(app, post("/api/v2/cluster/list_agents", "{}")).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some(1000500))
    );
    assert!(env["message"].as_str().unwrap().contains("disk on fire"));

    // A store that is down (Redis unreachable) is 503, saying so.
    let app = app_with_fault(ApiConfig::default(), Some(Fault::Down)).await;
    let (status, env) = send(app, post("/api/v2/cluster/list_agents", "{}")).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(1000503))
    );
    let message = env["message"].as_str().unwrap();
    assert!(
        message.contains("state store fake unavailable"),
        "{message}"
    );
}

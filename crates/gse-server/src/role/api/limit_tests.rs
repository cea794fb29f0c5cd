//! Unit tests of the request-level bounds (issue 9): what is read before
//! the app is known, how big an answer may be, repeated agents, and the
//! request line and header limits. Connection-level bounds (caps, header
//! and idle timeouts) need real sockets: gse-testkit's `r9_http` tests.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::ApiConfig;
use super::tests::{APP, SECRET, app_with, post, send};

fn unauthenticated(path: &str, body: impl Into<Body>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().method(Method::POST).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body.into()).unwrap()
}

#[tokio::test]
async fn body_credentials_are_read_from_a_small_body_only() {
    let config = ApiConfig {
        preauth_body_limit: 1024,
        ..ApiConfig::default()
    };
    let body = json!({"bk_app_code": APP, "bk_app_secret": SECRET, "pad": "x".repeat(2000)});
    let app = app_with(config.clone()).await;
    let (status, env) = send(
        app,
        unauthenticated("/api/v2/cluster/list_agents", body.to_string(), &[]),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(1000401))
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("api.preauth_body_limit"),
        "{env}"
    );

    // The same body with credential headers is read in full.
    let app = app_with(config.clone()).await;
    let (status, env) = send(app, post("/api/v2/cluster/list_agents", body.to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );

    // A small body with its credentials still works.
    let small = json!({"bk_app_code": APP, "bk_app_secret": SECRET});
    let app = app_with(config).await;
    let (status, env) = send(
        app,
        unauthenticated("/api/v2/cluster/list_agents", small.to_string(), &[]),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
}

#[tokio::test]
async fn wrong_header_credentials_are_refused_without_reading_the_body() {
    // A body that never ends: reading it would hang the call.
    let endless = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
    let auth = json!({"bk_app_code": APP, "bk_app_secret": "wrong"}).to_string();
    let req = unauthenticated(
        "/api/v2/cluster/list_agents",
        endless,
        &[("x-bkapi-authorization", &auth)],
    );
    let app = app_with(ApiConfig::default()).await;
    let (status, env) = tokio::time::timeout(Duration::from_secs(10), send(app, req))
        .await
        .expect("answered before any body byte");
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::UNAUTHORIZED, Some(1000403))
    );
}

#[tokio::test]
async fn an_answer_over_the_cap_is_1000413_naming_the_key() {
    let config = ApiConfig {
        max_response_bytes: 4096,
        ..ApiConfig::default()
    };
    // Every requested host is in the answer, known or not.
    let hosts: Vec<Value> = (0..200)
        .map(|i| json!({"ip": format!("10.1.0.{}", i % 250), "bk_cloud_id": i / 250}))
        .collect();
    let app = app_with(config.clone()).await;
    let (status, env) = send(
        app,
        post(
            "/api/c/compapi/v2/gse/get_agent_status",
            json!({"hosts": hosts}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413))
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("api.max_response_bytes"),
        "{env}"
    );
    // A small answer is unaffected.
    let app = app_with(config).await;
    let (status, env) = send(app, post("/api/v2/cluster/list_agents", "{}")).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
}

#[tokio::test]
async fn an_agent_named_again_is_answered_once() {
    let ids = vec!["0:10.0.0.1"; 50];
    let app = app_with(ApiConfig::default()).await;
    let (_, env) = send(
        app,
        post(
            "/api/v2/cluster/list_agent_state",
            json!({"agent_id_list": ids}).to_string(),
        ),
    )
    .await;
    assert_eq!(env["data"].as_array().map(Vec::len), Some(1), "{env}");
}

#[tokio::test]
async fn a_long_uri_is_414_and_big_headers_431_in_the_envelope() {
    let long = format!("/api/v2/cluster/list_agents?{}", "a".repeat(9000));
    let app = app_with(ApiConfig::default()).await;
    let (status, env) = send(app, post(&long, "{}")).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::URI_TOO_LONG, Some(1000414))
    );

    let mut req = post("/api/v2/cluster/list_agents", "{}");
    let big = "b".repeat(70 * 1024);
    req.headers_mut().insert("x-pad", big.parse().unwrap());
    let app = app_with(ApiConfig::default()).await;
    let (status, env) = send(app, req).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Some(1000431))
    );
}

#[test]
fn connections_over_the_caps_are_told_which_key_in_a_503() {
    use std::sync::Arc;

    use super::ApiError;
    use crate::fd_budget::API;

    let limits = Arc::new(gse_link::limits::ConnLimits::new(2, 1, API));
    let _held = limits.admit("10.0.0.1".parse().unwrap()).unwrap();
    let per_ip = limits.admit("10.0.0.1".parse().unwrap()).map(|_| ());
    let err = ApiError::from(per_ip.unwrap_err());
    assert_eq!(err.code(), 1000503);
    let text = err.to_string();
    assert!(text.contains("10.0.0.1") && text.contains("api.max_connections_per_ip"));
    let _other = limits.admit("10.0.0.2".parse().unwrap()).unwrap();
    let total = limits.admit("10.0.0.3".parse().unwrap()).map(|_| ());
    let err = ApiError::from(total.unwrap_err());
    assert!(
        err.to_string().contains("config api.max_connections,"),
        "{err}"
    );
}

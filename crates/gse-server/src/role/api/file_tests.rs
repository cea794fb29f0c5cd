//! The file-transfer endpoints through the whole router: request checks
//! that name the field, bk-job's answer shapes, pass-through rules and the
//! file-role error codes. The file role's own behaviour is tested in
//! `role::file::tests`.

use std::sync::Arc;

use axum::http::StatusCode;
use gse_core::seams::state_store::prelude::*;
use gse_core::seams::{AppRecord, StateStore};
use serde_json::{Value, json};

use super::file_request::{self, Limits};
use super::tests::{APP, SECRET, post, send};
use super::{ApiConfig, ApiContext, router};
use crate::role::file::spec::FileKind;
use crate::role::file::tests::{FakeFileLink, agent_record, key, service};
use crate::role::file::{FileConfig, FileService, PassThroughRule};
use crate::store::EmbeddedStore;

const TRANSFER: &str = "/api/v2/task/extensions/async_transfer_file";
const RESULT: &str = "/api/v2/task/extensions/get_transfer_file_result/";
const TERMINATE: &str = "/api/bk-gse/prod/api/v2/task/extensions/async_terminate_transfer_file";

struct App {
    router: axum::Router,
    link: Arc<FakeFileLink>,
    _dir: tempfile::TempDir,
}

/// A router over the embedded store, which knows connected agents
/// 0:10.0.0.1 .. 0:10.0.0.3 (agent ids `id-<ip>`).
async fn app_with(api: ApiConfig, file: FileConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    store
        .put_app(AppRecord::with_secret(APP, SECRET))
        .await
        .unwrap();
    let link = Arc::new(FakeFileLink::default());
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        store
            .upsert_agent(agent_record(ip, "n1", true))
            .await
            .unwrap();
        link.connected.lock().insert(key(ip));
    }
    let files: Arc<FileService> = service(&store, &link, file).await;
    let ctx = ApiContext {
        files: Some(files),
        ..ApiContext::new(store, api)
    };
    App {
        router: router(ctx),
        link,
        _dir: dir,
    }
}

async fn app() -> App {
    app_with(ApiConfig::default(), FileConfig::default()).await
}

async fn call(app: &App, path: &str, body: Value) -> (StatusCode, Value) {
    send(app.router.clone(), post(path, body.to_string())).await
}

/// A valid bk-job request, to break one field at a time.
fn job_request() -> Value {
    json!({
        "tasks": [{
            "source": {"file_name": "a.tar.gz", "store_dir": "/data/pkg/",
                       "agent": {"bk_agent_id": "0:10.0.0.1", "user": "root", "pwd": "x"}},
            "target": {"file_name": "", "store_dir": "/tmp/dst/", "owner": "root", "permission": 755,
                       "agents": [{"bk_agent_id": "0:10.0.0.2", "user": "root"},
                                  {"bk_agent_id": "id-10.0.0.3", "bk_container_id": ""},
                                  {"bk_agent_id": "0:10.9.9.9"}]}
        }],
        "timeout_seconds": 600,
        "auto_mkdir": true,
        "upload_speed": 0,
        "download_speed": 10
    })
}

/// `body` with `value` at the JSON pointer `at` (its parent must exist).
fn with(mut body: Value, at: &str, value: Value) -> Value {
    let (parent, field) = at.rsplit_once('/').unwrap();
    let parent = body
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match parent {
        Value::Object(map) => {
            map.insert(field.to_string(), value);
        }
        Value::Array(list) => list[field.parse::<usize>().unwrap()] = value,
        other => panic!("{at}: {other} holds no fields"),
    }
    body
}

#[tokio::test]
async fn transfer_poll_and_terminate_answer_in_bk_jobs_shapes() {
    let app = app().await;
    let (status, env) = call(&app, TRANSFER, job_request()).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
    let task_id = env["data"]["result"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(task_id.starts_with("GSETASK:F:"));
    assert_eq!(app.link.manifest_requests().await.len(), 1);

    let (status, env) = call(&app, RESULT, json!({"task_id": task_id})).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
    let list = env["data"]["result"].as_array().unwrap();
    assert_eq!(list.len(), 4, "one upload, three downloads: {env}");
    let mut top: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    top.sort_unstable();
    assert_eq!(top, ["content", "error_code", "error_msg"]);
    let mut keys: Vec<&str> = list[1]["content"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes_direct",
            "bytes_p2p",
            "dest_agent_id",
            "dest_container_id",
            "dest_file_dir",
            "dest_file_name",
            "end_time",
            "mode",
            "p2p_fallback",
            "progress",
            "protover",
            "size",
            "source_agent_id",
            "source_container_id",
            "source_file_dir",
            "source_file_name",
            "speed",
            "start_time",
            "status",
            "status_info",
            "type",
        ]
    );
    let up = &list[0];
    assert_eq!(
        (up["error_code"].as_i64(), up["content"]["mode"].as_i64()),
        (Some(115), Some(0))
    );
    assert_eq!(up["content"]["source_file_dir"], "/data/pkg/");
    assert_eq!(up["content"]["source_file_name"], "a.tar.gz");
    assert_eq!(up["content"]["protover"], 2);
    let down = &list[2];
    assert_eq!(
        down["content"]["dest_agent_id"], "id-10.0.0.3",
        "names echoed as sent"
    );
    assert_eq!(down["content"]["dest_file_name"], "a.tar.gz");
    assert_eq!(down["content"]["dest_file_dir"], "/tmp/dst/");
    assert_eq!(list[3]["error_code"], 117);

    // Later polls name only some agents.
    let poll = json!({"task_id": task_id, "agents": [{"bk_agent_id": "0:10.0.0.3", "bk_container_id": ""}]});
    let (_, env) = call(&app, RESULT, poll).await;
    assert_eq!(env["data"]["result"].as_array().unwrap().len(), 1, "{env}");

    let stop = json!({"task_id": task_id, "agents": [{"bk_agent_id": "0:10.0.0.2"}]});
    let (status, env) = call(&app, TERMINATE, stop).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
    assert_eq!(env["data"]["result"]["task_id"], task_id.as_str());
    let (_, env) = call(&app, RESULT, json!({"task_id": task_id})).await;
    let list = env["data"]["result"].as_array().unwrap();
    assert_eq!(
        (
            list[1]["error_code"].as_i64(),
            list[1]["content"]["status"].as_i64()
        ),
        (Some(126), Some(4))
    );
    assert_eq!(list[2]["error_code"], 115);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let app = app().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "tasks: missing"),
        (json!({"tasks": []}), "tasks: is empty"),
        (
            with(job_request(), "/tasks/0/target/permission", json!("rwx")),
            "tasks[0].target.permission: \"rwx\" is not a file mode",
        ),
        (
            with(job_request(), "/tasks/0/target/permission", json!(8)),
            "tasks[0].target.permission",
        ),
        (
            with(job_request(), "/tasks/0/target/permission", json!(true)),
            "tasks[0].target.permission: expected octal digits as a number or a string, got boolean `true`",
        ),
        (
            with(job_request(), "/tasks/0/source/store_dir", json!("data")),
            "tasks[0].source.store_dir: \"data\" must be an absolute directory",
        ),
        (
            with(job_request(), "/tasks/0/source/agent", json!(null)),
            "tasks[0].source.agent: missing",
        ),
        (
            with(job_request(), "/tasks/0/source/file_type", json!(7)),
            "tasks[0].source.file_type: 7 is not a file type",
        ),
        (
            with(job_request(), "/tasks/0/source/file_type", json!(1)),
            "",
        ),
        (
            with(
                with(job_request(), "/tasks/0/source/file_type", json!(1)),
                "/tasks/0/source/file_name",
                json!(""),
            ),
            "tasks[0].source.file_name: is empty",
        ),
        (
            with(job_request(), "/tasks/0/source/file_name", json!("../x")),
            "tasks[0].source.file_name",
        ),
        (
            with(job_request(), "/tasks/0/target/agents", json!([])),
            "tasks[0].target.agents: is empty",
        ),
        (
            with(
                job_request(),
                "/tasks/0/target/agents/1/bk_agent_id",
                json!("0:10.0.0.2"),
            ),
            "tasks[0].target.agents[1].bk_agent_id: \"0:10.0.0.2\" is listed twice",
        ),
        (
            with(job_request(), "/tasks/0/target/owner", json!("a b")),
            "tasks[0].target.owner",
        ),
        (
            with(
                job_request(),
                "/tasks/0/target/agents/0/user",
                json!("Root"),
            ),
            "tasks[0].target.agents[0].user",
        ),
        (
            with(job_request(), "/timeout_seconds", json!(86401)),
            "timeout_seconds: 86401 is over the limit of 86400 seconds (config file.max_timeout)",
        ),
        (
            with(job_request(), "/download_speed", json!("fast")),
            "download_speed: expected an integer",
        ),
        (
            with(job_request(), "/upload_speed", json!(1.5)),
            "upload_speed: expected an integer",
        ),
        (
            with(job_request(), "/tasks/0/source/file_type", json!("1")),
            "tasks[0].source.file_type: expected an integer",
        ),
        (
            with(job_request(), "/auto_mkdir", json!("yes")),
            "auto_mkdir: expected a boolean, got string \"yes\"",
        ),
    ];
    for (body, want) in cases {
        let (status, env) = call(&app, TRANSFER, body).await;
        if want.is_empty() {
            assert_eq!(env["code"], 0, "{env}");
            continue;
        }
        let msg = super::tests::bad_request_message(status, &env, want);
        assert!(msg.starts_with(want), "{want}: {msg}");
    }
}

#[tokio::test]
async fn too_many_hosts_or_tasks_is_413_naming_the_config_key() {
    let api = ApiConfig {
        max_hosts_per_call: 2,
        ..ApiConfig::default()
    };
    let file = FileConfig {
        max_tasks_per_transfer: 1,
        ..FileConfig::default()
    };
    let app = app_with(api, file).await;
    let (status, env) = call(&app, TRANSFER, job_request()).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413)),
        "{env}"
    );
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("api.max_hosts_per_call"),
        "{env}"
    );
    let two = json!([job_request()["tasks"][0], job_request()["tasks"][0]]);
    let (_, env) = call(&app, TRANSFER, with(job_request(), "/tasks", two)).await;
    assert!(
        env["message"]
            .as_str()
            .unwrap()
            .contains("file.max_tasks_per_transfer"),
        "{env}"
    );

    // Distinct agents over all tasks count, not entries.
    let targets = json!([{"bk_agent_id": "0:10.0.0.2"}]);
    let (_, env) = call(
        &app,
        TRANSFER,
        with(job_request(), "/tasks/0/target/agents", targets),
    )
    .await;
    assert_eq!(env["code"], 0, "{env}");
}

#[tokio::test]
async fn f9_a_pass_through_needs_the_operator() {
    let app = app().await;
    let body = with(job_request(), "/timeout_seconds", json!(0));
    let mut body = body.as_object().unwrap().clone();
    body.insert(
        "pass_through".into(),
        json!([{"from_zone": "a", "to_zone": "b"}]),
    );
    let (status, env) = call(&app, TRANSFER, Value::Object(body.clone())).await;
    let msg = super::tests::bad_request_message(status, &env, "pass_through");
    assert!(
        msg.starts_with(
            "pass_through[0]: from zone \"a\" to zone \"b\" is not allowed for app \"bk_job\""
        ),
        "{msg}"
    );
    assert!(msg.contains("[[file.pass_through]]"), "{msg}");

    let file = FileConfig {
        pass_through: vec![PassThroughRule {
            from_zone: "a".into(),
            to_zone: "b".into(),
            apps: vec![APP.into()],
        }],
        ..FileConfig::default()
    };
    let allowed = app_with(ApiConfig::default(), file).await;
    let (_, env) = call(&allowed, TRANSFER, Value::Object(body)).await;
    assert_eq!(env["code"], 0, "{env}");
}

#[tokio::test]
async fn unknown_transfers_and_nodes_without_the_role() {
    let app = app().await;
    for path in [RESULT, TERMINATE] {
        let (status, env) = call(&app, path, json!({"task_id": "GSETASK:F:nope:1"})).await;
        assert_eq!(
            (status, env["code"].as_i64()),
            (StatusCode::OK, Some(1011101)),
            "{env}"
        );
        assert!(env["message"].as_str().unwrap().contains("file.retention"));
    }
    let (_, env) = call(&app, RESULT, json!({})).await;
    assert_eq!(env["message"], "task_id: missing; this field is required");

    let store = Arc::new(super::tests::FakeStore::default());
    store
        .put_app(AppRecord::with_secret(APP, SECRET))
        .await
        .unwrap();
    let ctx = ApiContext::new(store, ApiConfig::default());
    let (status, env) = send(router(ctx), post(TRANSFER, job_request().to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(1000503))
    );
}

#[test]
fn extensions_parse_into_the_spec() {
    let limits = Limits::new(100, &FileConfig::default());
    let mut body = job_request();
    body["tasks"][0]["target"]["permission"] = json!("0644");
    body["tasks"][0]["source"]["file_name"] = json!("*.log");
    body["zone_chain"] = json!([{"zone": "b", "relays": [{"bk_agent_id": "0:10.1.0.1"}]}]);
    body["pass_through"] = json!([{"from_zone": "", "to_zone": "c"}]);
    body["upload_speed"] = json!(-1);
    let spec = file_request::transfer(body.as_object().unwrap(), &limits).unwrap();
    assert_eq!(spec.tasks[0].target.permission, 0o644);
    assert_eq!(spec.tasks[0].source.kind, FileKind::Wildcard);
    assert_eq!(spec.zone_chain[0].relays[0].bk_agent_id, "0:10.1.0.1");
    assert_eq!(spec.pass_through[0].from_zone, "");
    assert_eq!((spec.upload_speed, spec.download_speed), (0, 10));
    assert_eq!((spec.timeout_seconds, spec.auto_mkdir), (600, true));

    body["tasks"][0]["target"]["permission"] = json!(755);
    body["tasks"][0]["source"]["file_name"] = json!("");
    let spec = file_request::transfer(body.as_object().unwrap(), &limits).unwrap();
    assert_eq!(spec.tasks[0].target.permission, 0o755);
    assert_eq!(spec.tasks[0].source.kind, FileKind::Dir);

    let bad = |pointer: &str, value: Value| {
        let mut b = body.clone();
        *b.pointer_mut(pointer).unwrap() = value;
        file_request::transfer(b.as_object().unwrap(), &limits)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad("/zone_chain", json!([{"zone": "b", "relays": []}]))
            .starts_with("zone_chain[0].relays: is empty")
    );
    assert!(bad("/zone_chain", json!([{"zone": "b", "relays": [{"bk_agent_id": "0:1.1.1.1"}]}, {"zone": "b", "relays": [{"bk_agent_id": "0:1.1.1.2"}]}])).contains("is a hop twice"));
    assert!(
        bad("/pass_through", json!([{"from_zone": "c", "to_zone": "c"}]))
            .starts_with("pass_through[0]: from_zone and to_zone are both")
    );
    assert!(
        bad("/pass_through", json!([{"from_zone": "c"}]))
            .starts_with("pass_through[0].to_zone: missing")
    );
    assert!(bad("/zone_chain", json!((0..17).map(|i| json!({"zone": format!("z{i}"), "relays": [{"bk_agent_id": "0:1.1.1.1"}]})).collect::<Vec<_>>())).contains("at most 16"));
}

#[tokio::test]
async fn null_is_absent_and_poll_errors_name_the_field() {
    let app = app().await;
    // Optional fields sent as null count as absent.
    let mut body = job_request();
    for (at, value) in [
        ("/auto_mkdir", json!(null)),
        ("/timeout_seconds", json!(null)),
        ("/upload_speed", json!(null)),
        ("/tasks/0/target/permission", json!(null)),
        ("/tasks/0/target/owner", json!(null)),
        ("/tasks/0/source/file_type", json!(null)),
        ("/tasks/0/target/agents/0/user", json!(null)),
        ("/tasks/0/source/agent/pwd", json!(12)),
    ] {
        body = with(body, at, value);
    }
    body["zone_chain"] = json!(null);
    body["pass_through"] = json!(null);
    let (_, env) = call(&app, TRANSFER, body).await;
    assert_eq!(env["code"], 0, "{env}");
    let task_id = env["data"]["result"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A required field sent as null is missing.
    let cases: Vec<(Value, &str)> = vec![
        (
            with(job_request(), "/tasks/0/source/store_dir", json!(null)),
            "tasks[0].source.store_dir: missing",
        ),
        (
            with(job_request(), "/tasks/0/target/agents", json!(null)),
            "tasks[0].target.agents: missing",
        ),
        (
            with(job_request(), "/tasks/0/target/permission", json!(7.5)),
            "tasks[0].target.permission: \"7.5\" is not a file mode",
        ),
        (
            with(
                job_request(),
                "/tasks/0/target/agents/2/bk_agent_id",
                json!(9),
            ),
            "tasks[0].target.agents[2].bk_agent_id: expected a string, got integer `9`",
        ),
        (
            with(job_request(), "/timeout_seconds", json!(-1)),
            "timeout_seconds: expected an integer >= 0, got integer `-1`",
        ),
    ];
    for (body, want) in cases {
        let (status, env) = call(&app, TRANSFER, body).await;
        let msg = super::tests::bad_request_message(status, &env, want);
        assert!(msg.starts_with(want), "{want}: {msg}");
    }

    let polls: Vec<(Value, &str)> = vec![
        (json!({"task_id": null}), "task_id: missing"),
        (json!({"task_id": ""}), "task_id: \"\" is not a task id"),
        (
            json!({"task_id": 5}),
            "task_id: expected a string, got integer `5`",
        ),
        (
            json!({"task_id": task_id, "agents": [{"bk_agent_id": "0:10.0.0.2"}, {"bk_agent_id": "nope nope"}]}),
            "agents[1].bk_agent_id",
        ),
        (
            json!({"task_id": task_id, "agents": [{"bk_agent_id": "0:10.0.0.2", "user": "Root"}]}),
            "agents[0].user",
        ),
    ];
    for path in [RESULT, TERMINATE] {
        for (body, want) in &polls {
            let (status, env) = call(&app, path, body.clone()).await;
            let msg = super::tests::bad_request_message(status, &env, want);
            assert!(msg.starts_with(want), "{path} {want}: {msg}");
        }
    }
    // An empty or null agent list means all agents.
    for agents in [json!([]), json!(null)] {
        let (_, env) = call(&app, RESULT, json!({"task_id": task_id, "agents": agents})).await;
        assert_eq!(env["data"]["result"].as_array().unwrap().len(), 4, "{env}");
    }
}

//! The script-task endpoints through the whole router: request checks that
//! name the field, bk-job's answer shapes, and the task-role error codes.
//! The task role's own behaviour is tested in `role::task::tests`.

use std::sync::Arc;

use axum::http::StatusCode;
use gse_core::seams::state_store::prelude::*;
use serde_json::{Value, json};

use super::tests::{APP, FakeStore, post, record, send};
use super::{ApiConfig, ApiContext, router};
use crate::role::task::tests::{FakeLink, key};
use crate::role::task::{TaskConfig, TaskParts, TaskService};

const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
const RESULT: &str = "/api/v2/task/extensions/get_execute_script_result/";
const TERMINATE: &str = "/api/bk-gse/prod/api/v2/task/extensions/async_terminate_execute_script";

/// A router whose store knows one connected agent, 0:10.0.0.1.
async fn app_with(config: ApiConfig) -> (axum::Router, Arc<FakeLink>) {
    let store = Arc::new(FakeStore::default());
    store
        .put_app(gse_core::seams::AppRecord::with_secret(
            APP,
            super::tests::SECRET,
        ))
        .await
        .unwrap();
    store
        .upsert_agent(record("10.0.0.1", "agent-1", true))
        .await
        .unwrap();
    let link = Arc::new(FakeLink::default());
    link.connected.lock().insert(key("10.0.0.1"));
    let tasks = TaskService::start(TaskParts {
        node_id: "node-1".into(),
        config: TaskConfig::default(),
        store: store.clone(),
        sender: link.sender(),
        danger_rules: gse_core::danger::builtin_rules(),
        alarms: None,
    })
    .await
    .unwrap();
    let ctx = ApiContext {
        tasks: Some(tasks),
        ..ApiContext::new(store, config)
    };
    (router(ctx), link)
}

async fn call(path: &str, body: Value) -> (StatusCode, Value) {
    let (app, _) = app_with(ApiConfig::default()).await;
    send(app, post(path, body.to_string())).await
}

/// A valid bk-job request, to break one field at a time.
fn job_request() -> Value {
    json!({
        "agents": [{"bk_agent_id": "0:10.0.0.1", "user": "root", "pwd": "x"}, {"bk_agent_id": "0:10.9.9.9"}],
        "scripts": [{"script_name": "bk_gse_script_1_1.sh", "script_store_dir": "/tmp/bkjob/root", "script_content": "#!/bin/bash\necho hi\n"}],
        "atomicTaskNum": 0,
        "atomic_tasks": [
            {"atomic_task_id": 0, "command": "/tmp/bkjob/root/bk_gse_script_1_1.sh a", "timeout_seconds": 60},
            {"atomic_task_id": 1, "command": "echo vars", "timeout_seconds": 0}
        ],
        "atomic_tasks_relations": [{"atomic_task_id": 1, "atomic_task_id_idx": [0]}],
        "windows_interpreter": "",
        "login_env": false,
        "tag": "step-1"
    })
}

#[tokio::test]
async fn execute_poll_and_terminate_answer_in_bk_jobs_shapes() {
    let (app, link) = app_with(ApiConfig::default()).await;
    let (status, env) = send(app.clone(), post(EXECUTE, job_request().to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
    let task_id = env["data"]["result"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(task_id.starts_with("GSETASK:S:"));
    assert_eq!(link.sent.lock().len(), 1);

    let poll = json!({"task_id": task_id, "agent_tasks": [
        {"bk_agent_id": "0:10.0.0.1", "atomic_tasks": [{"atomic_task_id": 0, "offset": 0, "limit": 100}]},
        {"bk_agent_id": "0:10.9.9.9", "bk_container_id": null, "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}]}]});
    let (status, env) = send(app.clone(), post(RESULT, poll.to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
    let list = env["data"]["result"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let mut keys: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "atomic_task_id",
            "bk_agent_id",
            "bk_container_id",
            "end_time",
            "error_code",
            "error_msg",
            "screen",
            "script_exit_code",
            "start_time",
            "status",
            "tag"
        ]
    );
    assert_eq!(
        (list[0]["status"].as_i64(), list[0]["error_code"].as_i64()),
        (Some(0), Some(115))
    );
    assert_eq!(
        (list[0]["tag"].as_str(), list[0]["bk_container_id"].as_str()),
        (Some("step-1"), Some(""))
    );
    assert_eq!(
        (list[1]["status"].as_i64(), list[1]["error_code"].as_i64()),
        (Some(5), Some(117))
    );

    // No agent_tasks: every entry, both atomic tasks of both agents.
    let (_, env) = send(
        app.clone(),
        post(RESULT, json!({"task_id": task_id}).to_string()),
    )
    .await;
    assert_eq!(env["data"]["result"].as_array().unwrap().len(), 4);

    let (_, env) = send(
        app,
        post(
            TERMINATE,
            json!({"task_id": task_id, "agents": []}).to_string(),
        ),
    )
    .await;
    assert_eq!(env["data"], json!({"result": {"task_id": task_id}}));
    assert_eq!(link.sent.lock().len(), 2, "CancelTask sent");
}

#[tokio::test]
async fn every_bad_field_is_named() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/agents", json!([]), "agents: is empty"),
        (
            "/agents/0/bk_agent_id",
            json!("a b"),
            "agents[0].bk_agent_id:",
        ),
        (
            "/agents/1/bk_agent_id",
            json!("0:10.0.0.1"),
            "agents[1].bk_agent_id: \"0:10.0.0.1\" is listed twice",
        ),
        (
            "/agents/0/user",
            json!("Root;rm"),
            "agents[0].user: \"Root;rm\" is not a valid user name",
        ),
        (
            "/scripts/0/script_store_dir",
            json!("tmp/x"),
            "scripts[0].script_store_dir: \"tmp/x\" must be an absolute",
        ),
        (
            "/scripts/0/script_store_dir",
            json!("/tmp/../etc"),
            "scripts[0].script_store_dir: \"/tmp/../etc\" must not contain a `..`",
        ),
        (
            "/scripts/0/script_name",
            json!("a/b.sh"),
            "scripts[0].script_name: \"a/b.sh\" must be a plain file name",
        ),
        ("/atomic_tasks", json!([]), "atomic_tasks: is empty"),
        (
            "/atomic_tasks/1/atomic_task_id",
            json!(0),
            "atomic_tasks[1].atomic_task_id: 0 is used twice",
        ),
        (
            "/atomic_tasks/1/atomic_task_id",
            json!(2),
            "atomic_tasks[1].atomic_task_id: 2 is out of range",
        ),
        (
            "/atomic_tasks/0/timeout_seconds",
            json!(86401),
            "atomic_tasks[0].timeout_seconds: 86401 is over 86400",
        ),
        (
            "/atomic_tasks/0/timeout_seconds",
            json!(-1),
            "atomic_tasks[0].timeout_seconds: expected an integer >= 0, got integer `-1`",
        ),
        (
            "/atomic_tasks/0/command",
            json!("x".repeat(65537)),
            "atomic_tasks[0].command: is over 65536 bytes",
        ),
        (
            "/atomic_tasks/0/command",
            json!(""),
            "atomic_tasks[0].command: is empty",
        ),
        (
            "/atomic_tasks_relations/0/atomic_task_id_idx",
            json!([1]),
            "atomic_tasks_relations[0].atomic_task_id_idx: atomic task 1 may only wait",
        ),
        (
            "/login_env",
            json!("yes"),
            "login_env: expected a boolean, got string \"yes\"",
        ),
        (
            "/atomic_tasks/1/atomic_task_id",
            json!("1"),
            "atomic_tasks[1].atomic_task_id: expected an integer >= 0, got string",
        ),
        (
            "/atomic_tasks/0/atomic_task_id",
            Value::Null,
            "atomic_tasks[0].atomic_task_id: missing",
        ),
        (
            "/atomic_tasks/0/atomic_task_id",
            json!(0.5),
            "atomic_tasks[0].atomic_task_id: expected an integer >= 0, got floating point `0.5`",
        ),
        (
            "/atomic_tasks_relations/0/atomic_task_id",
            json!(2),
            "atomic_tasks_relations[0].atomic_task_id: 2 is not an atomic task id",
        ),
        (
            "/atomic_tasks_relations/0/atomic_task_id_idx",
            json!(["0"]),
            "atomic_tasks_relations[0].atomic_task_id_idx[0]: expected an integer >= 0, got string",
        ),
        (
            "/scripts/0/script_content",
            json!(7),
            "scripts[0].script_content: expected a string, got integer `7`",
        ),
        (
            "/agents/1",
            json!({"bk_agent_id": "0:10.9.9.9", "bk_container_id": "c".repeat(257)}),
            "agents[1].bk_container_id: is over 256 bytes",
        ),
        ("/tag", json!("t".repeat(257)), "tag: is over 256 bytes"),
    ];
    for (pointer, value, want) in cases {
        let mut body = job_request();
        *body
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}")) = value;
        let (status, env) = call(EXECUTE, body).await;
        let message = super::tests::bad_request_message(status, &env, pointer);
        assert!(message.starts_with(want), "{pointer}: {message}");
    }
    let mut body = job_request();
    body.as_object_mut().unwrap().remove("atomic_tasks");
    let (_, env) = call(EXECUTE, body).await;
    assert_eq!(
        env["message"],
        "atomic_tasks: missing; this field is required"
    );
}

#[tokio::test]
async fn null_counts_as_absent_and_unknown_fields_are_ignored() {
    let mut body = job_request();
    for pointer in [
        "/scripts",
        "/atomic_tasks_relations",
        "/windows_interpreter",
        "/login_env",
        "/tag",
        "/agents/0/user",
        "/atomic_tasks/0/timeout_seconds",
    ] {
        *body.pointer_mut(pointer).unwrap() = Value::Null;
    }
    // bk-job's pwd and atomicTaskNum, and fields no one reads, of any type.
    *body.pointer_mut("/agents/0/pwd").unwrap() = json!({"rsa": [1, 2]});
    body["atomicTaskNum"] = json!("two");
    body["bk_username"] = json!(7);
    body["agents"][1]["bk_container_id"] = Value::Null;
    let (status, env) = call(EXECUTE, body).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{env}"
    );
}

#[tokio::test]
async fn poll_and_terminate_name_the_bad_field() {
    let agent = |extra: Value| {
        let mut a = json!({"bk_agent_id": "0:10.0.0.1"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let windows: Vec<Value> = (0..101).map(|i| json!({"atomic_task_id": i})).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            RESULT,
            json!({"task_id": ""}),
            "task_id: \"\" is not a task id",
        ),
        (
            RESULT,
            json!({"task_id": "t", "agent_tasks": [agent(json!({})), {"bk_agent_id": "a b"}]}),
            "agent_tasks[1].bk_agent_id:",
        ),
        (
            RESULT,
            json!({"task_id": "t", "agent_tasks": [agent(json!({"atomic_tasks": [{"offset": "5"}]}))]}),
            "agent_tasks[0].atomic_tasks[0].offset: expected an integer >= 0, got string",
        ),
        (
            RESULT,
            json!({"task_id": "t", "agent_tasks": [agent(json!({"atomic_tasks": windows}))]}),
            "agent_tasks[0].atomic_tasks: has 101 entries",
        ),
        (
            RESULT,
            json!({"task_id": "t", "agent_tasks": [agent(json!({"bk_container_id": "c".repeat(257)}))]}),
            "agent_tasks[0].bk_container_id: is over 256 bytes",
        ),
        (
            TERMINATE,
            json!({"task_id": "t", "agents": [agent(json!({})), {"bk_container_id": "c"}]}),
            "agents[1].bk_agent_id: missing",
        ),
        (
            TERMINATE,
            json!({"task_id": 5}),
            "task_id: expected a string, got integer `5`",
        ),
    ];
    for (path, body, want) in cases {
        let (status, env) = call(path, body.clone()).await;
        let message = super::tests::bad_request_message(status, &env, want);
        assert!(message.starts_with(want), "{body}: {message}");
    }

    // More atomic tasks than a task can have is 413, like too many agents.
    let mut body = job_request();
    body["atomic_tasks"] = (0..101)
        .map(|i| json!({"atomic_task_id": i, "command": "true"}))
        .collect();
    let (status, env) = call(EXECUTE, body).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413)),
        "{env}"
    );
}

#[tokio::test]
async fn too_many_agents_is_413_and_an_unknown_task_is_1011101() {
    let config = ApiConfig {
        max_hosts_per_call: 1,
        ..ApiConfig::default()
    };
    let (app, _) = app_with(config).await;
    let (status, env) = send(app, post(EXECUTE, job_request().to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some(1000413))
    );

    for path in [RESULT, TERMINATE] {
        let (status, env) = call(path, json!({"task_id": "GSETASK:S:nope:1"})).await;
        assert_eq!(
            (status, env["result"].as_bool(), env["code"].as_i64()),
            (StatusCode::OK, Some(false), Some(1011101)),
            "{env}"
        );
        assert!(
            env["message"]
                .as_str()
                .unwrap()
                .contains("GSETASK:S:nope:1")
        );
    }
    let (_, env) = call(RESULT, json!({})).await;
    assert_eq!(env["message"], "task_id: missing; this field is required");
}

#[tokio::test]
async fn a_node_without_the_task_role_says_so() {
    let store = FakeStore::default();
    store
        .put_app(gse_core::seams::AppRecord::with_secret(
            APP,
            super::tests::SECRET,
        ))
        .await
        .unwrap();
    let ctx = ApiContext::new(Arc::new(store), ApiConfig::default());
    let (status, env) = send(router(ctx), post(EXECUTE, job_request().to_string())).await;
    assert_eq!(
        (status, env["code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(1000503))
    );
}

//! bk-job's task API as the end-to-end tests drive it: start a script on
//! agents, read every entry, wait until all are final, and start agents
//! that are alive.

use std::time::Duration;

use gse_testkit::{AgentOptions, AgentProc, Api, Cluster, ServerProc, eventually};
use serde_json::{Value, json};

pub const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
pub const RESULT: &str = "/api/v2/task/extensions/get_execute_script_result";

pub async fn start(api: &Api, agents: &[&str], command: &str, extra: Value) -> String {
    let mut body = json!({
        "agents": agents.iter().map(|a| json!({"bk_agent_id": a})).collect::<Vec<_>>(),
        "atomic_tasks": [{"atomic_task_id": 0, "command": command, "timeout_seconds": 60}],
        "atomicTaskNum": 0,
    });
    gse_testkit::merge_json(&mut body, &extra);
    let (status, v) = api.post(EXECUTE, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], 0, "{v}");
    v["data"]["result"]["task_id"]
        .as_str()
        .expect("task_id")
        .to_string()
}

/// Every entry of the task (all agents, atomic task 0, from offset 0).
pub async fn entries(api: &Api, task_id: &str, agents: &[&str]) -> Vec<Value> {
    let agent_tasks: Vec<Value> = agents
        .iter()
        .map(|a| json!({"bk_agent_id": a, "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}]}))
        .collect();
    let (_, v) = api
        .post(
            RESULT,
            json!({"task_id": task_id, "agent_tasks": agent_tasks}),
        )
        .await;
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no result list: {v}"))
}

pub fn is_final(e: &Value) -> bool {
    let (s, c) = (
        e["status"].as_i64().unwrap(),
        e["error_code"].as_i64().unwrap(),
    );
    !(matches!(s, 0 | 1) && matches!(c, 0 | 115))
}

pub async fn wait_final(api: &Api, task_id: &str, agents: &[&str], within: Duration) -> Vec<Value> {
    eventually(&format!("task {task_id} final"), within, || async {
        let got = entries(api, task_id, agents).await;
        (got.len() == agents.len() && got.iter().all(is_final))
            .then_some(got.clone())
            .ok_or(format!("{got:?}"))
    })
    .await
}

pub async fn alive_agents(cluster: &Cluster, server: &ServerProc, ips: &[&str]) -> Vec<AgentProc> {
    let agents: Vec<AgentProc> = ips
        .iter()
        .map(|ip| cluster.agent(server, AgentOptions::ip(ip)))
        .collect();
    for ip in ips {
        server.api.wait_alive(ip).await;
    }
    agents
}

//! Issue 9 item 6 end to end: the dangerous-operation check applies to
//! plugin control commands (`operate_proc_multi`), to script destinations,
//! and to commands spelled the way a shell still runs them.
//!
//! No test here runs anything destructive if the guard fails: the blocked
//! commands are `touch <marker>` behind a rule the test adds to the server's
//! `[danger]` config, and the proof is that the marker never appears. The
//! built-in destructive rules are checked at the unit level
//! (`gse-core/src/danger/tests.rs`, the cases of docs/DANGER.md).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gse_core::danger::{DangerAction, DangerRuleSpec};
use gse_testkit::{AgentOptions, AgentProc, Api, Cluster, ServerOptions, ServerProc, eventually};
use serde_json::{Value, json};

const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
const RESULT: &str = "/api/v2/task/extensions/get_execute_script_result";
const OPERATE: &str = "/api/v2/proc/operate_proc_multi/";
const PROC_RESULT: &str = "/api/v2/proc/get_proc_operate_result_v2/";

/// The marker every blocked command of these tests would create.
const MARKER: &str = "r9-danger-marker";
/// What alarm-only commands create: they run.
const ALARM_MARKER: &str = "r9-alarm-marker";

fn rule(name: &str, pattern: &str, action: DangerAction) -> DangerRuleSpec {
    DangerRuleSpec {
        name: name.into(),
        pattern: pattern.into(),
        action,
        description: format!("test rule {name}"),
    }
}

/// A server whose `[danger]` adds a blocking rule for `touch …MARKER…` and
/// an alarm-only one for `touch …ALARM_MARKER…`, and one agent at `ip`.
async fn cluster(ip: &str) -> (Cluster, ServerProc, AgentProc) {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(|cfg| {
                cfg.danger.rules.push(rule(
                    "no_marker",
                    &format!(r"^touch\s.*{MARKER}"),
                    DangerAction::Block,
                ));
                cfg.danger.rules.push(rule(
                    "alarm_marker",
                    &format!(r"^touch\s.*{ALARM_MARKER}"),
                    DangerAction::Alarm,
                ));
                cfg.proc.dispatch_interval = Duration::from_millis(200);
            })),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(&server, AgentOptions::ip(ip));
    let api = server.api.clone();
    let ip = ip.to_string();
    eventually("agent alive", Duration::from_secs(15), || {
        let (api, ip) = (api.clone(), ip.clone());
        async move {
            (api.alive(0, &ip).await == 1)
                .then_some(())
                .ok_or_else(String::new)
        }
    })
    .await;
    (cluster, server, agent)
}

// === plugin control commands ===

async fn operate(api: &Api, agent: &str, name: &str, spec: Value) -> String {
    let body = json!({"proc_operate_req": [{
        "meta": {"namespace": "nodeman", "name": name, "labels": {"proc_name": name}},
        "op_type": 0,
        "agent_id_list": [agent],
        "spec": spec,
    }]});
    let (status, v) = api.post(OPERATE, body).await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    v["data"]["task_id"].as_str().expect("task_id").to_string()
}

/// The final answer of the entry `key`.
async fn proc_answer(api: &Api, task_id: &str, key: &str) -> Value {
    eventually(
        &format!("proc task {task_id} final"),
        Duration::from_secs(60),
        || async {
            let (_, v) = api.post(PROC_RESULT, json!({"task_id": task_id})).await;
            let entry = &v["data"][key];
            (v["code"] == 0 && entry["error_code"].as_i64().is_some_and(|c| c != 115))
                .then(|| entry.clone())
                .ok_or(v.to_string())
        },
    )
    .await
}

fn plugin_spec(dir: &Path, start_cmd: &str) -> Value {
    json!({
        "identity": {"index_key": "", "proc_name": "r9plugin",
                     "setup_path": dir.display().to_string(),
                     "pid_path": dir.join("r9plugin.pid").display().to_string(),
                     "user": "", "config_path": "", "log_path": ""},
        "control": {"start_cmd": start_cmd, "stop_cmd": "true", "restart_cmd": "",
                    "reload_cmd": "", "kill_cmd": "", "version_cmd": "", "health_cmd": ""},
        "resource": {"cpu": 50, "mem": 50},
        "alive_monitor_policy": {"auto_type": 2, "start_check_secs": 1, "op_timeout": 20}
    })
}

fn alarm_kinds(server: &ServerProc) -> Vec<(String, String)> {
    server
        .alarms()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("kind"), a.to_string())
        })
        .collect()
}

#[tokio::test]
async fn r9_6_blocked_start_cmd_is_refused_and_never_runs() {
    let ip = "127.0.9.61";
    let (_cluster, server, _agent) = cluster(ip).await;
    let agent = format!("0:{ip}");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join(MARKER);
    let start = format!("\\touch {}", marker.display());
    let task = operate(
        &server.api,
        &agent,
        "r9blocked",
        plugin_spec(dir.path(), &start),
    )
    .await;
    let answer = proc_answer(&server.api, &task, &format!("{agent}:nodeman:r9blocked")).await;
    let msg = answer["error_msg"].as_str().unwrap_or_default();
    assert_eq!(answer["error_code"], 65535, "{answer}");
    assert!(
        msg.contains("no_marker") && msg.contains("start_cmd"),
        "the refusal names the rule and the command: {answer}"
    );
    assert!(!marker.exists(), "the blocked start_cmd ran: {answer}");
    eventually(
        "a dangerous_operation_blocked alarm",
        Duration::from_secs(10),
        || async {
            let kinds = alarm_kinds(&server);
            kinds
                .iter()
                .any(|(k, a)| k == "dangerous_operation_blocked" && a.contains("no_marker"))
                .then_some(())
                .ok_or(format!("{kinds:?}"))
        },
    )
    .await;

    // Alarm-only: the start_cmd runs, and an alarm says so.
    let ran = dir.path().join(ALARM_MARKER);
    let start = format!("touch {}", ran.display());
    let task = operate(
        &server.api,
        &agent,
        "r9alarmed",
        plugin_spec(dir.path(), &start),
    )
    .await;
    let answer = proc_answer(&server.api, &task, &format!("{agent}:nodeman:r9alarmed")).await;
    assert!(
        ran.exists(),
        "the alarm-only start_cmd did not run: {answer}"
    );
    eventually(
        "a dangerous_operation alarm",
        Duration::from_secs(10),
        || async {
            let kinds = alarm_kinds(&server);
            kinds
                .iter()
                .any(|(k, a)| k == "dangerous_operation" && a.contains("alarm_marker"))
                .then_some(())
                .ok_or(format!("{kinds:?}"))
        },
    )
    .await;
}

// === script tasks ===

async fn execute(api: &Api, agent: &str, command: &str, scripts: Value) -> String {
    let body = json!({
        "agents": [{"bk_agent_id": agent}],
        "scripts": scripts,
        "atomic_tasks": [{"atomic_task_id": 0, "command": command, "timeout_seconds": 30}],
    });
    let (status, v) = api.post(EXECUTE, body).await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    v["data"]["result"]["task_id"]
        .as_str()
        .expect("task_id")
        .to_string()
}

/// The final entry of atomic task 0 on `agent`.
async fn script_final(api: &Api, task_id: &str, agent: &str) -> Value {
    eventually(
        &format!("task {task_id} final"),
        Duration::from_secs(60),
        || async {
            let body = json!({"task_id": task_id, "agent_tasks": [
                {"bk_agent_id": agent, "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}]}]});
            let (_, v) = api.post(RESULT, body).await;
            let e = v["data"]["result"][0].clone();
            let (s, c) = (e["status"].as_i64(), e["error_code"].as_i64());
            let open = matches!(s, Some(0 | 1)) && matches!(c, Some(0 | 115));
            (s.is_some() && !open).then_some(e).ok_or(v.to_string())
        },
    )
    .await
}

fn assert_blocked(entry: &Value, rule: &str, what: &str) {
    assert_eq!(
        (entry["status"].as_i64(), entry["error_code"].as_i64()),
        (Some(5), Some(118)),
        "{what} was not blocked: {entry}"
    );
    let msg = entry["error_msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(rule),
        "{what}: the refusal names {rule}: {entry}"
    );
}

/// Removes a file the test may have caused on failure.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn r9_6_scripts_are_not_written_into_system_directories() {
    let ip = "127.0.9.62";
    let (_cluster, server, _agent) = cluster(ip).await;
    let agent = format!("0:{ip}");
    // A new file in /etc first: harmless if the check is missing (the file
    // is removed), and the test stops here before touching /etc/passwd.
    let probe_name = format!("r9-danger-probe-{}", std::process::id());
    let probe = RemoveOnDrop(Path::new("/etc").join(&probe_name));
    let scripts = json!([{"script_name": probe_name, "script_store_dir": "/etc",
                          "script_content": "#!/bin/sh\ntrue\n"}]);
    let task = execute(&server.api, &agent, "true", scripts).await;
    let entry = script_final(&server.api, &task, &agent).await;
    assert_blocked(&entry, "script_destination", "a script into /etc");
    assert!(!probe.0.exists(), "a script was written into /etc");

    // The reported case, `/etc` + `passwd`. Its content is the file's own,
    // so nothing would change even if it were written.
    let before = std::fs::read("/etc/passwd").unwrap();
    let meta = std::fs::metadata("/etc/passwd").unwrap();
    let scripts = json!([{"script_name": "passwd", "script_store_dir": "/etc//",
                          "script_content": String::from_utf8_lossy(&before)}]);
    let task = execute(&server.api, &agent, "true", scripts).await;
    let entry = script_final(&server.api, &task, &agent).await;
    assert_blocked(&entry, "script_destination", "a script onto /etc/passwd");
    let after = std::fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (after.ino(), after.mode(), after.mtime_nsec()),
        (meta.ino(), meta.mode(), meta.mtime_nsec()),
        "/etc/passwd was replaced"
    );
}

#[tokio::test]
async fn r9_6_bypass_spellings_of_a_blocked_command_never_run() {
    let ip = "127.0.9.63";
    let (_cluster, server, _agent) = cluster(ip).await;
    let agent = format!("0:{ip}");
    let dir = tempfile::tempdir().unwrap();
    let m = |i: usize| {
        dir.path()
            .join(format!("{MARKER}-{i}"))
            .display()
            .to_string()
    };
    // Each spelling runs `touch <marker>` in bash; each was let through by
    // the line-regex check.
    let spellings: Vec<String> = vec![
        format!("\\touch {}", m(0)),
        format!("\"touch\" {}", m(1)),
        format!("t''ouch {}", m(2)),
        format!("true && touch {}", m(3)),
        format!("if true; then touch {}; fi", m(4)),
        format!("sh -c 'touch {}'", m(5)),
        format!("tou\\\nch {}", m(6)),
        format!("timeout 5 touch {}", m(7)),
        format!("env FOO=1 touch {}", m(8)),
        format!("echo $(touch {})", m(9)),
        format!("nice -n 5 touch {}", m(10)),
        format!("eval \"touch {}\"", m(11)),
        format!("/usr/bin/env touch {}", m(12)),
    ];
    let mut tasks = Vec::new();
    for cmd in &spellings {
        tasks.push(execute(&server.api, &agent, cmd, json!([])).await);
    }
    // And inside a script file the command runs.
    let script_dir = dir.path().join("scripts");
    let script = format!(
        "#!/bin/bash\nset -e\nfor i in 1; do\n  \"touch\" \\\n    {}\ndone\n",
        m(13)
    );
    let scripts = json!([{"script_name": "bk_gse_script_r9.sh",
                          "script_store_dir": script_dir.display().to_string(),
                          "script_content": script}]);
    let run = format!("bash {}/bk_gse_script_r9.sh", script_dir.display());
    tasks.push(execute(&server.api, &agent, &run, scripts).await);
    for (i, task) in tasks.iter().enumerate() {
        let entry = script_final(&server.api, task, &agent).await;
        let what = spellings.get(i).map_or("the script file", String::as_str);
        assert_blocked(&entry, "no_marker", what);
    }
    for i in 0..=13 {
        assert!(!Path::new(&m(i)).exists(), "marker {i} was created");
    }
}

//! T1..T8 end to end: real agents run real processes, driven through the
//! bk-job task API (COMPAT.md §2.1) and `gsectl exec`.

use std::time::Duration;

use gse_testkit::{Cluster, ServerOptions, eventually};
use serde_json::json;

use crate::task_api::{EXECUTE, RESULT, alive_agents, entries, start, wait_final};

const TERMINATE: &str = "/api/v2/task/extensions/async_terminate_execute_script";

#[tokio::test]
async fn t2_command_and_scripts_run_and_unknown_agent_is_117_at_once() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.1", "127.0.1.2"]).await;
    let api = &server.api;
    let targets = ["0:127.0.1.1", "0:127.0.1.2", "0:10.9.9.9"];

    let task = start(
        api,
        &targets,
        "echo hello from $(hostname) >/dev/null; echo hello; exit 3",
        json!({}),
    )
    .await;
    // Listed at once, the unknown agent already final with 117.
    let first = entries(api, &task, &targets).await;
    assert_eq!(first.len(), 3, "{first:?}");
    let unknown = first
        .iter()
        .find(|e| e["bk_agent_id"] == "0:10.9.9.9")
        .unwrap();
    assert_eq!(
        (unknown["status"].as_i64(), unknown["error_code"].as_i64()),
        (Some(5), Some(117)),
        "{unknown}"
    );

    let done = wait_final(api, &task, &targets, Duration::from_secs(20)).await;
    for e in done.iter().filter(|e| e["bk_agent_id"] != "0:10.9.9.9") {
        assert_eq!(e["status"], 5, "non-zero exit is failed: {e}");
        assert_eq!(e["error_code"], 0, "{e}");
        assert_eq!(e["script_exit_code"], 3, "{e}");
        assert_eq!(e["screen"], "hello\n");
        assert!(e["end_time"].as_i64().unwrap() >= e["start_time"].as_i64().unwrap());
        assert!(
            e["start_time"].as_i64().unwrap() > 1_600_000_000_000,
            "ms timestamps: {e}"
        );
    }

    // Scripts written to script_store_dir first, interpreters by shebang, run serially.
    let dir = cluster.path.join("scripts");
    let scripts = json!([
        {"script_name": "bk_gse_script_1.py", "script_store_dir": dir, "script_content": "#!/usr/bin/env python3\nimport sys\nprint('py', sys.argv[1])\n"},
        {"script_name": "bk_gse_script_2.pl", "script_store_dir": dir, "script_content": "#!/usr/bin/perl\nprint \"perl ok\\n\";\n"},
    ]);
    let d = dir.display();
    let body = json!({
        "agents": [{"bk_agent_id": "0:127.0.1.1"}],
        "scripts": scripts,
        "atomic_tasks": [
            {"atomic_task_id": 0, "command": format!("{d}/bk_gse_script_1.py arg1"), "timeout_seconds": 30},
            {"atomic_task_id": 1, "command": format!("{d}/bk_gse_script_2.pl"), "timeout_seconds": 30}],
        "atomic_tasks_relations": [{"atomic_task_id": 1, "atomic_task_id_idx": [0]}],
    });
    let (_, v) = api.post(EXECUTE, body).await;
    let task = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
    let screens = eventually("both atomic tasks done", Duration::from_secs(20), || async {
        let q = json!({"task_id": task, "agent_tasks": [{"bk_agent_id": "0:127.0.1.1",
            "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}, {"atomic_task_id": 1, "offset": 0}]}]});
        let (_, v) = api.post(RESULT, q).await;
        let list = v["data"]["result"].as_array().cloned().unwrap_or_default();
        (list.len() == 2 && list.iter().all(|e| e["status"] == 2))
            .then(|| list.iter().map(|e| e["screen"].as_str().unwrap().to_string()).collect::<Vec<_>>())
            .ok_or(v.to_string())
    })
    .await;
    assert_eq!(screens, ["py arg1\n", "perl ok\n"]);
}

#[tokio::test]
async fn t8_timeout_kills_forked_children_and_terminate_gives_126() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.3"]).await;
    let api = &server.api;
    let marker = cluster.path.join("child-survived");
    let tag = format!("gse_t8_{}", std::process::id());
    // A forked child that would leave a marker after the timeout.
    let cmd = format!("(sleep 4; touch {}) & sleep 60 # {tag}", marker.display());
    let body = json!({"agents": [{"bk_agent_id": "0:127.0.1.3"}],
        "atomic_tasks": [{"atomic_task_id": 0, "command": cmd, "timeout_seconds": 1}]});
    let (_, v) = api.post(EXECUTE, body).await;
    let task = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
    let done = wait_final(api, &task, &["0:127.0.1.3"], Duration::from_secs(20)).await;
    assert_eq!(done[0]["status"], 3, "timeout: {}", done[0]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!marker.exists(), "a forked child outlived the timeout");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &tag])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    let task = start(api, &["0:127.0.1.3"], "echo started; sleep 60", json!({})).await;
    eventually("running", Duration::from_secs(10), || async {
        let e = entries(api, &task, &["0:127.0.1.3"]).await;
        (e[0]["status"] == 1).then_some(()).ok_or(format!("{e:?}"))
    })
    .await;
    let (_, v) = api
        .post(
            TERMINATE,
            json!({"task_id": task, "agents": [{"bk_agent_id": "0:127.0.1.3"}]}),
        )
        .await;
    assert_eq!(v["data"]["result"]["task_id"], task.as_str(), "{v}");
    let done = wait_final(api, &task, &["0:127.0.1.3"], Duration::from_secs(15)).await;
    assert_eq!(done[0]["error_code"], 126, "{}", done[0]);
}

#[tokio::test]
async fn t6_t7_dangerous_commands_are_blocked_or_alarmed() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.4"]).await;
    let api = &server.api;
    // Harmless if it ran: the device does not exist and count=0.
    let task = start(
        api,
        &["0:127.0.1.4"],
        "dd if=/dev/zero of=/dev/sdzz9 bs=1 count=0",
        json!({}),
    )
    .await;
    let done = wait_final(api, &task, &["0:127.0.1.4"], Duration::from_secs(10)).await;
    assert_eq!(
        (done[0]["status"].as_i64(), done[0]["error_code"].as_i64()),
        (Some(5), Some(118)),
        "{}",
        done[0]
    );
    assert!(
        done[0]["error_msg"]
            .as_str()
            .unwrap()
            .contains("dd_to_device"),
        "{}",
        done[0]
    );

    // Alarm-only: it runs (the shutdown never executes: `true ||`).
    let task = start(api, &["0:127.0.1.4"], "true || shutdown -h now", json!({})).await;
    let done = wait_final(api, &task, &["0:127.0.1.4"], Duration::from_secs(10)).await;
    assert_eq!(done[0]["status"], 2, "{}", done[0]);
    eventually(
        "both alarms in the alarm log",
        Duration::from_secs(10),
        || async {
            let kinds: Vec<String> = server
                .alarms()
                .iter()
                .map(|a| a["kind"].as_str().unwrap_or("").to_string())
                .collect();
            (kinds.iter().any(|k| k == "dangerous_operation_blocked")
                && kinds.iter().any(|k| k == "dangerous_operation"))
            .then_some(())
            .ok_or(format!("{kinds:?}"))
        },
    )
    .await;
}

#[tokio::test]
async fn t8_screen_slices_by_utf8_byte_offset_and_survives_a_server_restart() {
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.5"]).await;
    let text = "中文日志 line ✓\nsecond 第二行\n";
    let task = start(
        &server.api,
        &["0:127.0.1.5"],
        &format!("printf '{}'", text.replace('\n', "\\n")),
        json!({}),
    )
    .await;
    wait_final(
        &server.api,
        &task,
        &["0:127.0.1.5"],
        Duration::from_secs(10),
    )
    .await;

    server.restart().await;
    // Read it back as bk-job does: offset += UTF-8 byte length of each screen.
    let api = &server.api;
    let mut offset = 0usize;
    let mut collected = String::new();
    for _ in 0..100 {
        let q = json!({"task_id": task, "agent_tasks": [{"bk_agent_id": "0:127.0.1.5",
            "atomic_tasks": [{"atomic_task_id": 0, "offset": offset, "limit": 4}]}]});
        let (_, v) = api.post(RESULT, q).await;
        let e = &v["data"]["result"][0];
        assert_eq!(e["status"], 2, "after the restart: {v}");
        let screen = e["screen"].as_str().unwrap();
        if screen.is_empty() {
            break;
        }
        assert!(screen.len() <= 4, "limit exceeded: {screen:?}");
        offset += screen.len();
        collected.push_str(screen);
    }
    assert_eq!(collected, text);
}

#[tokio::test]
async fn t4_t5_runs_as_a_named_user_with_its_login_environment() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: creating a test user needs root");
        return;
    }
    let user = TestUser::create();
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.6"]).await;
    let api = &server.api;
    let body = json!({
        "agents": [{"bk_agent_id": "0:127.0.1.6", "user": user.name}],
        "login_env": true,
        "atomic_tasks": [{"atomic_task_id": 0, "command": "id -un; echo home=$HOME; echo profile=$GSE_PROFILE_VAR; id -u", "timeout_seconds": 30}],
    });
    let (_, v) = api.post(EXECUTE, body).await;
    let task = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
    let done = wait_final(api, &task, &["0:127.0.1.6"], Duration::from_secs(15)).await;
    let screen = done[0]["screen"].as_str().unwrap();
    assert_eq!(done[0]["status"], 2, "{}", done[0]);
    assert!(
        screen.starts_with(&format!(
            "{}\nhome=/home/{}\nprofile=from-profile\n",
            user.name, user.name
        )),
        "{screen}"
    );
    assert!(!screen.ends_with("\n0\n"), "ran as root: {screen}");

    let body = json!({"agents": [{"bk_agent_id": "0:127.0.1.6", "user": "no_such_user_x"}],
        "atomic_tasks": [{"atomic_task_id": 0, "command": "id", "timeout_seconds": 30}]});
    let (_, v) = api.post(EXECUTE, body).await;
    let task = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
    let done = wait_final(api, &task, &["0:127.0.1.6"], Duration::from_secs(15)).await;
    assert_eq!(done[0]["error_code"], 122, "{}", done[0]);
    assert!(
        done[0]["error_msg"]
            .as_str()
            .unwrap()
            .contains("no_such_user_x")
    );
}

/// A Unix user created for one test and removed after it.
struct TestUser {
    name: String,
}

impl TestUser {
    fn create() -> Self {
        let name = format!("gset{}", std::process::id() % 100_000);
        let ok = std::process::Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "useradd {name} failed");
        let profile = format!("/home/{name}/.profile");
        std::fs::write(&profile, "export GSE_PROFILE_VAR=from-profile\n").unwrap();
        TestUser { name }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .args(["-r", "-f", &self.name])
            .status();
    }
}

#[tokio::test]
async fn t9_gsectl_exec_groups_output_and_fails_when_a_host_fails() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let _agents = alive_agents(&cluster, &server, &["127.0.1.7", "127.0.1.8"]).await;
    let api = &server.api;
    let gsectl = |hosts: &str| {
        api.gsectl()
            .args(["exec", "--hosts", hosts, "--", "echo", "same", "output"])
            .output()
            .unwrap()
    };
    let out = gsectl("0:127.0.1.7,0:127.0.1.8");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("=== 2 hosts (0:127.0.1.7, 0:127.0.1.8): success\nsame output\n"),
        "{text}"
    );

    let out = gsectl("0:127.0.1.7,0:10.9.9.8");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("0:10.9.9.8") && text.contains("(117)"),
        "{text}"
    );
}

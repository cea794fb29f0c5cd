//! The README's first command, minus the build: `gse-server quickstart`
//! starts a server and N agents, writes quickstart.json, and stops cleanly.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gse_testkit::{Api, bin, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// `gse-server quickstart ARGS` on free ports in a new directory, once its
/// quickstart.json is written: the directory (kept alive), DIR, the
/// process and quickstart.json.
async fn start_quickstart(args: &[&str]) -> (tempfile::TempDir, PathBuf, Child, Value) {
    let dir = tempfile::Builder::new()
        .prefix("gse-qs-")
        .tempdir()
        .unwrap();
    let qs = dir.path().join("qs");
    let child = Command::new(bin("gse-server"))
        .arg("quickstart")
        .args(args)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&qs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info_path = qs.join("quickstart.json");
    let info: Value = eventually("quickstart.json", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&info_path).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    })
    .await;
    (dir, qs, child, info)
}

#[tokio::test]
async fn quickstart_runs_a_platform_and_stops_its_agents() {
    let (_dir, qs, mut child, info) = start_quickstart(&["--agents", "2"]).await;
    let info_path = qs.join("quickstart.json");
    for key in [
        "api",
        "agent_listen",
        "bk_app_code",
        "bk_app_secret",
        "alarm_log",
        "server_pid",
        "agents",
    ] {
        assert!(
            info.get(key).is_some(),
            "quickstart.json lacks {key}: {info}"
        );
    }
    assert_eq!(info["server_pid"], child.id());
    let agents = info["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[1]["ip"], "127.0.0.2");
    assert_eq!(agents[1]["bk_cloud_id"], 0);
    // Each agent names its local data socket (D1), and it is live.
    for a in agents {
        let ipc = a["data_ipc"].as_str().expect("agents[].data_ipc");
        assert!(
            std::os::unix::net::UnixStream::connect(ipc).is_ok(),
            "data_ipc {ipc} does not accept connections"
        );
    }

    let api = Api::new(
        info["api"].as_str().unwrap(),
        info["bk_app_code"].as_str().unwrap(),
        info["bk_app_secret"].as_str().unwrap(),
    );
    assert_eq!(api.alive(0, "127.0.0.1").await, 1);
    assert_eq!(api.alive(0, "127.0.0.2").await, 1);
    let out = Command::new(bin("gsectl"))
        .arg("--quickstart")
        .arg(&qs)
        .arg("agents")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches("alive").count() == 2,
        "{text}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually("quickstart exits", Duration::from_secs(20), || {
        let s = child.try_wait();
        async move { s.map_err(|e| e.to_string())?.ok_or("running".to_string()) }
    })
    .await;
    assert!(status.success(), "{status}");
    for a in agents {
        let pid = Pid::from_raw(a["pid"].as_i64().unwrap() as i32);
        assert!(
            kill(pid, None).is_err(),
            "agent {pid} still running after quickstart stopped"
        );
    }
    assert!(
        !info_path.exists(),
        "a stale quickstart.json was left behind"
    );
}

/// Issue 12: `--cloud-area ID:K` starts a proxy for area ID with K agents
/// whose only upstream it is; quickstart.json lists the proxy and the
/// area's agents, and everything stops with quickstart.
#[tokio::test]
async fn quickstart_cloud_area_starts_a_proxy_with_its_agents_behind_it() {
    let (_dir, _qs, mut child, info) =
        start_quickstart(&["--agents", "1", "--cloud-area", "7:2"]).await;
    let proxies = info["proxies"].as_array().expect("proxies");
    assert_eq!(proxies.len(), 1, "{info}");
    let proxy = &proxies[0];
    for key in ["bk_cloud_id", "agent_listen", "pid", "config", "metrics"] {
        assert!(proxy.get(key).is_some(), "proxies[0] lacks {key}: {proxy}");
    }
    assert_eq!(proxy["bk_cloud_id"], 7);
    let agents = info["agents"].as_array().unwrap();
    let area: Vec<&Value> = agents.iter().filter(|a| a["bk_cloud_id"] == 7).collect();
    assert_eq!((agents.len(), area.len()), (3, 2), "{info}");

    let api = Api::new(
        info["api"].as_str().unwrap(),
        info["bk_app_code"].as_str().unwrap(),
        info["bk_app_secret"].as_str().unwrap(),
    );
    let proxy_ip = proxy["agent_listen"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    for a in &area {
        let ip = a["ip"].as_str().unwrap();
        assert_eq!(api.alive(7, ip).await, 1, "{a}");
        let (_, v) = api
            .post(
                "/api/v2/cluster/list_agent_info",
                serde_json::json!({"agent_id_list": [format!("7:{ip}")]}),
            )
            .await;
        assert_eq!(v["data"][0]["parent_ip"], proxy_ip.as_str(), "{v}");
    }
    let metrics = reqwest::get(proxy["metrics"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gse_proxy_upstream_connected 1"),
        "{metrics}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually("quickstart exits", Duration::from_secs(30), || {
        let s = child.try_wait();
        async move { s.map_err(|e| e.to_string())?.ok_or("running".to_string()) }
    })
    .await;
    assert!(status.success(), "{status}");
    let pid = Pid::from_raw(proxy["pid"].as_i64().unwrap() as i32);
    assert!(
        kill(pid, None).is_err(),
        "the proxy still runs after quickstart stopped"
    );
}

//! `gse-server quickstart --nodes N --zookeeper --redis`: N node processes
//! on a real ZooKeeper and Redis, agents that know every node, a node that
//! dies reported while the rest keep running, and brought back with
//! `gse-server run -c <its config>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use gse_testkit::redis::RedisServer;
use gse_testkit::zookeeper::ZooKeeperServer;
use gse_testkit::{Api, bin, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A child process stopped (SIGTERM, then SIGKILL) when the test ends,
/// passing or not, so no node or quickstart outlives it.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
            for _ in 0..100 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// quickstart.json once quickstart wrote it; quickstart's output if it
/// exits first or the wait runs out.
async fn read_info(path: &Path, quickstart: &mut Stopped, out: &Path) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(info) = serde_json::from_str(&text)
        {
            return info;
        }
        let exited = quickstart.0.try_wait().unwrap();
        if exited.is_some() || tokio::time::Instant::now() > deadline {
            panic!(
                "no quickstart.json (quickstart {}); its output:\n{}",
                exited.map_or("still running after 120 s".to_string(), |s| format!(
                    "exited: {s}"
                )),
                std::fs::read_to_string(out).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until agent `0:ip` is alive on one of `apis`.
async fn wait_alive_on_one(apis: &[&Api], ip: &str) {
    eventually(
        &format!("agent 0:{ip} alive on a node"),
        Duration::from_secs(30),
        || async {
            for api in apis {
                if api.alive(0, ip).await == 1 {
                    return Ok(());
                }
            }
            Err("not alive on any node".to_string())
        },
    )
    .await;
}

#[tokio::test]
async fn quickstart_runs_three_nodes_survives_one_dying_and_takes_it_back() {
    let zk = ZooKeeperServer::start().await;
    let redis = RedisServer::start(None).await;
    let dir = tempfile::Builder::new()
        .prefix("gse-qsc-")
        .tempdir()
        .unwrap();
    let qs = dir.path().join("qs");
    let out_path = dir.path().join("quickstart.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut quickstart = Stopped(
        Command::new(bin("gse-server"))
            .args(["quickstart", "--nodes", "3", "--agents", "3"])
            .args(["--zookeeper", &zk.connect_string(), "--redis", &redis.url()])
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--agent-listen",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(&qs)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let info = read_info(&qs.join("quickstart.json"), &mut quickstart, &out_path).await;
    let nodes = info["nodes"].as_array().expect("quickstart.json nodes");
    assert_eq!(nodes.len(), 3, "{info}");
    let want = ids(&["node-1", "node-2", "node-3"]);
    for (n, id) in nodes.iter().zip(&want) {
        assert_eq!(n["node_id"], id.as_str(), "{n}");
        for key in ["api", "agent_listen", "pid", "config"] {
            assert!(n.get(key).is_some(), "nodes[] lacks {key}: {n}");
        }
        assert!(Path::new(n["config"].as_str().unwrap()).is_file(), "{n}");
    }
    assert_eq!(info["api"], nodes[0]["api"], "api stays the first node's");
    assert_eq!(info["agent_listen"], nodes[0]["agent_listen"]);
    let distinct: std::collections::BTreeSet<_> = nodes
        .iter()
        .map(|n| n["agent_listen"].to_string())
        .collect();
    assert_eq!(distinct.len(), 3, "every node its own agent port: {info}");

    let (code, secret) = (
        info["bk_app_code"].as_str().unwrap(),
        info["bk_app_secret"].as_str().unwrap(),
    );
    let apis: Vec<Api> = nodes
        .iter()
        .map(|n| Api::new(n["api"].as_str().unwrap(), code, secret))
        .collect();
    let listed = apis[0].list_nodes().await.unwrap();
    let got: Vec<&str> = listed.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(
        got,
        ["node-1", "node-2", "node-3"],
        "the first API lists every node"
    );
    for api in &apis[1..] {
        api.wait_listed(&want).await;
    }
    let agents = info["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    for a in agents {
        let pid = Pid::from_raw(a["pid"].as_i64().unwrap() as i32);
        assert!(kill(pid, None).is_ok(), "agent {a} is running");
        wait_alive_on_one(&apis.iter().collect::<Vec<_>>(), a["ip"].as_str().unwrap()).await;
    }

    // A crash of node-2: quickstart says so, keeps running, the others drop it.
    let node2 = Pid::from_raw(nodes[1]["pid"].as_i64().unwrap() as i32);
    kill(node2, Signal::SIGKILL).unwrap();
    let config2 = PathBuf::from(nodes[1]["config"].as_str().unwrap());
    let said = eventually("quickstart reports node-2", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        async move {
            (text.contains("node node-2") && text.contains("exited"))
                .then_some(text.clone())
                .ok_or(text)
        }
    })
    .await;
    assert!(
        said.contains(&format!("run -c {}", config2.display())),
        "the hint names the command: {said}"
    );
    assert!(
        quickstart.0.try_wait().unwrap().is_none(),
        "quickstart keeps running"
    );
    let left = ids(&["node-1", "node-3"]);
    apis[0].wait_listed(&left).await;
    apis[2].wait_listed(&left).await;
    for a in agents {
        wait_alive_on_one(&[&apis[0], &apis[2]], a["ip"].as_str().unwrap()).await;
    }

    // `gse-server run -c <its config>` brings it back and it rejoins.
    let back_out = std::fs::File::create(dir.path().join("node-2-back.out")).unwrap();
    let _back = Stopped(
        Command::new(bin("gse-server"))
            .arg("--log-file")
            .arg(dir.path().join("node-2-back.log"))
            .arg("run")
            .arg("-c")
            .arg(&config2)
            .stdout(back_out.try_clone().unwrap())
            .stderr(back_out)
            .spawn()
            .unwrap(),
    );
    for api in &apis {
        api.wait_listed(&want).await;
    }
    assert!(quickstart.0.try_wait().unwrap().is_none());

    kill(Pid::from_raw(quickstart.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually("quickstart exits", Duration::from_secs(30), || {
        let s = quickstart.0.try_wait();
        async move { s.map_err(|e| e.to_string())?.ok_or("running".to_string()) }
    })
    .await;
    assert!(status.success(), "{status}");
    for n in [&nodes[0], &nodes[2]] {
        let pid = Pid::from_raw(n["pid"].as_i64().unwrap() as i32);
        assert!(kill(pid, None).is_err(), "node {n} outlived quickstart");
    }
}

#[tokio::test]
async fn quickstart_with_several_nodes_and_no_zookeeper_says_which_flags_it_needs() {
    let dir = tempfile::Builder::new()
        .prefix("gse-qsc-")
        .tempdir()
        .unwrap();
    let qs = dir.path().join("qs");
    let out = Command::new(bin("gse-server"))
        .args(["quickstart", "--nodes", "2", "--agents", "1", "--dir"])
        .arg(&qs)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "--nodes 2 alone must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--nodes 2 needs --zookeeper") && err.contains("--redis"),
        "{err}"
    );
    assert!(!qs.exists(), "nothing is made before the flags are checked");
    let out = Command::new(bin("gse-server"))
        .args([
            "quickstart",
            "--nodes",
            "2",
            "--redis",
            "redis://127.0.0.1:1/",
        ])
        .arg("--dir")
        .arg(&qs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--zookeeper"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

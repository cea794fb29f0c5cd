//! bk-cmdb's host identity push (issue 13 item 5; COMPAT §2.2b) with a
//! real server and agent: `async_push_file` writes the identity file the
//! collectors read, `async/get_transfer_file_result` answers per agent in
//! the shape bk-cmdb parses, a second push replaces the file (a reader that
//! reloads on a new mtime sees the new identity), a link planted at the
//! path is replaced, never written through, and bad requests name their
//! field.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use gse_testkit::{AgentOptions, Api, Cluster, ServerOptions, eventually};
use serde_json::{Value, json};

const PUSH: &str = "/api/v2/task/async_push_file";
const RESULT: &str = "/api/v2/task/async/get_transfer_file_result";

/// What bk-cmdb writes: the host's identity, as collectors read it
/// (COMPAT §1.2 "Host identity file").
fn identity(host_id: u64, module: u64) -> String {
    json!({
        "bk_host_innerip": "127.0.0.1", "bk_cloud_id": 0, "bk_host_id": host_id,
        "bk_biz_id": 2, "tenant_id": "system", "dataid": 0,
        "associations": {(module.to_string()): {"bk_biz_id": 2, "bk_set_id": 3, "bk_module_id": module, "layer": null}},
    })
    .to_string()
}

async fn push(api: &Api, dir: &Path, content: &str, agent: &str) -> String {
    let (status, v) = api
        .post(
            PUSH,
            json!({"timeout_seconds": 60, "auto_mkdir": true, "tasks": [{
                "file_name": "hostid", "store_dir": dir, "file_content": content,
                "owner": "root", "right": 0o644, "agent_id_list": [agent]}]}),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(0)), "{v}");
    let id = v["data"]["result"]["task_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("GSETASK:F:"), "{id}");
    id
}

/// Polls as bk-cmdb does until every entry is final.
async fn finished(api: &Api, task_id: &str, agent: &str) -> Vec<Value> {
    eventually(
        &format!("push {task_id} final"),
        Duration::from_secs(30),
        || async {
            let (_, v) = api
                .post(
                    RESULT,
                    json!({"task_id": task_id, "agent_id_list": [agent]}),
                )
                .await;
            let list = v["data"]["result"].as_array().cloned().unwrap_or_default();
            (!list.is_empty() && list.iter().all(|e| e["error_code"] != 115))
                .then_some(list)
                .ok_or(format!("{v}"))
        },
    )
    .await
}

/// A collector's view of the identity file: its JSON and mtime.
fn read_identity(path: &Path) -> (Value, i64) {
    let text = std::fs::read_to_string(path).unwrap();
    let meta = std::fs::metadata(path).unwrap();
    (
        serde_json::from_str(&text).unwrap(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
    )
}

#[tokio::test]
async fn f_cmdb_pushes_the_host_identity_a_collector_reads() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));
    let api = &server.api;
    api.wait_alive("127.0.0.1").await;
    let agent_id = agent.agent_id().expect("the agent's id");
    let dir = cluster.path.join("var/lib/gse/host");
    let path = dir.join("hostid");

    let first = push(api, &dir, &identity(7, 11), &agent_id).await;
    let results = finished(api, &first, &agent_id).await;
    assert_eq!(
        results.len(),
        1,
        "asked by agent: its download only: {results:?}"
    );
    let e = &results[0];
    assert_eq!(e["error_code"], 0, "{e}");
    let c = &e["content"];
    assert_eq!(
        (c["type"].as_str(), c["mode"].as_i64(), c["status"].as_i64()),
        (Some("download"), Some(1), Some(2)),
        "{e}"
    );
    assert_eq!(c["dest_agent_id"], agent_id.as_str());
    assert_eq!(c["dest_file_dir"], dir.display().to_string());
    assert_eq!(c["dest_file_name"], "hostid");
    assert_eq!(c["protover"], 2);
    for key in [
        "progress",
        "size",
        "speed",
        "start_time",
        "end_time",
        "source_agent_id",
        "source_file_dir",
        "source_file_name",
        "status_info",
    ] {
        assert!(!c[key].is_null(), "{key} missing: {e}");
    }
    let (seen, mtime) = read_identity(&path);
    assert_eq!(seen["bk_host_id"], 7);
    assert_eq!(seen["associations"]["11"]["bk_module_id"], 11);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(meta.uid(), 0);

    // The host moves to another module: the new identity replaces the file
    // at once (a new inode: a reader never sees half of it), and a reader
    // that reloads on a changed mtime picks it up.
    let inode = meta.ino();
    let second = push(api, &dir, &identity(7, 12), &agent_id).await;
    assert_eq!(finished(api, &second, &agent_id).await[0]["error_code"], 0);
    let (seen, mtime2) = read_identity(&path);
    assert_eq!(seen["associations"]["12"]["bk_module_id"], 12, "{seen}");
    assert!(mtime2 != mtime || std::fs::metadata(&path).unwrap().ino() != inode);

    // A link planted where the file goes is replaced, not written through.
    let victim = cluster.path.join("victim");
    std::fs::write(&victim, "do not touch").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let third = push(api, &dir, &identity(8, 12), &agent_id).await;
    assert_eq!(finished(api, &third, &agent_id).await[0]["error_code"], 0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch");
    assert!(
        !std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read_identity(&path).0["bk_host_id"], 8);

    // Asked without agents: the upload entry too, typed "upload".
    let (_, v) = api.post(RESULT, json!({"task_id": third})).await;
    let types: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["upload", "download"], "{v}");

    // Unknown agents end at once with 117; bad input names its field.
    let unknown = push(api, &dir, "{}", "0:127.0.9.9").await;
    let e = &finished(api, &unknown, "0:127.0.9.9").await[0];
    assert_eq!(e["error_code"], 117, "{e}");
    let (status, v) = api
        .post(
            PUSH,
            json!({"tasks": [{"file_name": "../hostid", "store_dir": dir, "file_content": "x",
                              "agent_id_list": [agent_id]}]}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("tasks[0].file_name"),
        "{v}"
    );
    let (status, v) = api
        .post(PUSH, json!({"tasks": [{"file_name": "hostid", "store_dir": dir, "agent_id_list": [agent_id]}]}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("tasks[0].file_content"),
        "{v}"
    );
}

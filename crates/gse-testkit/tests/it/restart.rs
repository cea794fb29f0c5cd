//! What must survive a server restart on the embedded store: apps added
//! with `gse-server apps add`, and agent identities; agents reconnect.

use std::time::Duration;

use gse_testkit::{AgentOptions, Api, Cluster, ServerOptions, eventually};
use serde_json::json;

#[tokio::test]
async fn apps_and_agent_identities_survive_a_server_restart() {
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.51"));

    let out = std::process::Command::new(gse_testkit::bin("gse-server"))
        .args(["apps", "add", "--config"])
        .arg(&server.config_path)
        .args(["--code", "bk_job", "--secret", "job-secret"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = Api::new(server.api.base.clone(), "bk_job", "job-secret");
    eventually("agent alive", Duration::from_secs(15), || async {
        (job.alive(0, "127.0.0.51").await == 1)
            .then_some(())
            .ok_or(String::new())
    })
    .await;
    let id = agent.agent_id().unwrap();

    server.restart().await;
    eventually(
        "agent reconnected after the restart",
        Duration::from_secs(20),
        || async {
            (job.alive(0, "127.0.0.51").await == 1)
                .then_some(())
                .ok_or(String::new())
        },
    )
    .await;
    let (_, v) = job
        .post(
            "/api/v2/cluster/list_agent_state",
            json!({"agent_id_list": [id]}),
        )
        .await;
    assert_eq!(
        v["data"][0]["status_code"], 2,
        "same identity after restart: {v}"
    );
}

//! Issue 9 item 3, from a security review: an agent id is pinned to one
//! identity too. Tasks, file transfers and plugin operations address hosts
//! by `bk_agent_id` (GSE 2.0's normal addressing), so a holder of the shared
//! certificate registering a free identity with another host's agent id
//! would otherwise receive that host's tasks.

use super::*;

const VICTIM_IP: &str = "127.0.0.101";
const VICTIM: &str = "0:127.0.0.101";
const IMPOSTOR: &str = "0:127.0.0.102";

/// Waits until the agent's log shows how its registration ended.
async fn registration_answered(agent: &AgentProc) {
    eventually("the impostor's registration answered", PATIENCE, || async {
        let log = agent.log();
        let answered = ["connected and registered", "refused our registration"]
            .iter()
            .any(|n| log.contains(n));
        answered.then_some(()).ok_or_else(|| tail(&log))
    })
    .await;
}

/// An agent at `ip` that sends `agent_id` as its own.
fn claiming(ip: &str, agent_id: &str) -> AgentOptions {
    let stolen = agent_id.to_string();
    AgentOptions {
        customize: Some(Arc::new(move |cfg| {
            cfg.agent.agent_id = Some(stolen.clone());
        })),
        ..host(ip, "impostor")
    }
}

#[tokio::test]
async fn r9_3_an_agent_id_cannot_be_taken_under_another_identity() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let victim = cluster.agent(&server, host(VICTIM_IP, "victim"));
    let id = wait_agent_id(&victim).await;
    wait_holder(&server, VICTIM, &id).await;

    // The impostor has the shared certificate, a free identity and the
    // victim's agent id.
    let impostor = cluster.agent(&server, claiming("127.0.0.102", &id));
    registration_answered(&impostor).await;

    // Every task addressed by the victim's agent id runs on the victim.
    let target = [id.as_str()];
    let tasks: Vec<String> = futures::future::join_all(
        (0..20).map(|_| start(&server.api, &target, "echo $PPID", json!({}))),
    )
    .await;
    for task in &tasks {
        let done = wait_final(&server.api, task, &target, PATIENCE).await;
        assert_eq!(done[0]["status"], 2, "{done:?}");
        let ran_on = done[0]["screen"].as_str().unwrap_or_default().trim();
        assert_eq!(
            ran_on,
            victim.pid().to_string(),
            "a task for {id} ran on the impostor (pid {})",
            impostor.pid()
        );
    }

    // The impostor is refused, on both sides, with an alarm, and keeps
    // being refused.
    let pinned = format!("agent id {id} is pinned to identity {VICTIM}");
    server_log_has(&server, &[&pinned, IMPOSTOR]).await;
    agent_log_has(&impostor, &["refused our registration", &pinned]).await;
    eventually("identity_conflict alarm", PATIENCE, || async {
        let alarms = server.alarms();
        alarms
            .iter()
            .any(|a| {
                a["kind"] == "identity_conflict" && a["agent"] == IMPOSTOR && a["bk_agent_id"] == id
            })
            .then_some(())
            .ok_or(format!("{alarms:?}"))
    })
    .await;
    let tried = count(&server.log(), &[&pinned]);
    eventually("the impostor refused again", PATIENCE, || async {
        (count(&server.log(), &[&pinned]) > tried)
            .then_some(())
            .ok_or(tail(&server.log()))
    })
    .await;
    assert_eq!(holder(&server, IMPOSTOR).await, None);

    // Releasing the victim's identity frees its agent id too: the next
    // claim of that agent id, under any identity, is pinned.
    let config = server.config_path.display().to_string();
    let (ok, text) = gse_server(&["agents", "release-pin", "-c", &config, "--agent", VICTIM]);
    assert!(ok && text.contains(&id), "{text}");
    wait_holder(&server, IMPOSTOR, &id).await;
    let (ok, text) = gse_server(&["agents", "pins", "-c", &config]);
    assert!(
        ok && text.contains(IMPOSTOR) && !text.contains(VICTIM),
        "{text}"
    );
}

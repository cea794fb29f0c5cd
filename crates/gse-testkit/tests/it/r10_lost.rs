//! Issue 10 item 3: the lost-connection alarm (K4) survives a server
//! restart. An agent known before the restart that is not back within
//! `alarm.lost_grace` raises `agent_lost` once; one that comes back raises
//! nothing; a loss still in its grace when the server died is alarmed after
//! the restart; a loss alarmed before it is neither repeated nor forgotten
//! (the agent's return clears it).

use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, ServerOptions, ServerProc, eventually};

/// Long enough for an agent to reconnect to a restarted server on a loaded
/// machine, short enough to keep the tests quick.
const GRACE: Duration = Duration::from_secs(8);

fn alarms_of(server: &ServerProc, kind: &str, agent: &str) -> Vec<serde_json::Value> {
    server
        .alarms()
        .into_iter()
        .filter(|a| a["kind"] == kind && a["agent"] == agent)
        .collect()
}

async fn wait_alive(server: &ServerProc, ip: &str, want: i64) {
    let api = &server.api;
    eventually(
        &format!("{ip} alive == {want}"),
        Duration::from_secs(30),
        || async move {
            let got = api.alive(0, ip).await;
            (got == want).then_some(()).ok_or(format!("alive = {got}"))
        },
    )
    .await;
}

/// Waits for the one `agent_lost` of `agent`, and returns it.
async fn wait_lost(server: &ServerProc, agent: &str) -> serde_json::Value {
    eventually(
        &format!("agent_lost for {agent}"),
        GRACE + Duration::from_secs(30),
        || async {
            let got = alarms_of(server, "agent_lost", agent);
            got.first().cloned().ok_or(format!("{:?}", server.alarms()))
        },
    )
    .await
}

/// How the server goes down in [`not_back_after_restart`].
enum Stop {
    Crash,
    Clean,
}

/// Two agents; the server goes down; one agent goes away for good while it
/// is down; the server starts again on the same config and data dir.
async fn not_back_after_restart(stop: Stop, back_ip: &str, gone_ip: &str) {
    let cluster = Cluster::new();
    let mut server = cluster
        .server(ServerOptions {
            lost_grace: GRACE,
            ..ServerOptions::default()
        })
        .await;
    let _back = cluster.agent(&server, AgentOptions::ip(back_ip));
    let mut gone = cluster.agent(&server, AgentOptions::ip(gone_ip));
    wait_alive(&server, back_ip, 1).await;
    wait_alive(&server, gone_ip, 1).await;
    let gone_id = gone.agent_id().unwrap();

    match stop {
        Stop::Crash => server.kill9(),
        Stop::Clean => {
            server.stop();
        }
    }
    gone.kill9();
    server.start_again().await;
    wait_alive(&server, back_ip, 1).await;

    let (back, gone_key) = (format!("0:{back_ip}"), format!("0:{gone_ip}"));
    let alarm = wait_lost(&server, &gone_key).await;
    assert_eq!(alarm["bk_agent_id"], gone_id.as_str(), "{alarm}");
    let message = alarm["message"].as_str().unwrap();
    assert!(
        message.contains("not reconnected within 8s after the server restarted"),
        "the alarm should say why: {message}"
    );
    assert_eq!(
        server.api.alive(0, gone_ip).await,
        0,
        "the gone agent is offline"
    );
    // Both grace timers started with the server; the returning agent's
    // would have fired by now. A moment more for a repeat to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alarms_of(&server, "agent_lost", &gone_key).len(), 1);
    let about_back: Vec<_> = server
        .alarms()
        .into_iter()
        .filter(|a| a["agent"] == back.as_str())
        .collect();
    assert!(about_back.is_empty(), "the agent came back: {about_back:?}");
    assert_eq!(server.api.alive(0, back_ip).await, 1);
}

#[tokio::test]
async fn r10_3_agent_not_back_after_server_crash_raises_agent_lost() {
    not_back_after_restart(Stop::Crash, "127.0.10.31", "127.0.10.32").await;
}

#[tokio::test]
async fn r10_3_agent_not_back_after_a_clean_restart_raises_agent_lost() {
    not_back_after_restart(Stop::Clean, "127.0.10.33", "127.0.10.34").await;
}

#[tokio::test]
async fn r10_3_losses_open_at_a_crash_are_neither_forgotten_nor_repeated() {
    let cluster = Cluster::new();
    let mut server = cluster
        .server(ServerOptions {
            lost_grace: GRACE,
            ..ServerOptions::default()
        })
        .await;
    let (pending_ip, alarmed_ip) = ("127.0.10.35", "127.0.10.36");
    let (pending_key, alarmed_key) = (format!("0:{pending_ip}"), format!("0:{alarmed_ip}"));
    let mut pending = cluster.agent(&server, AgentOptions::ip(pending_ip));
    let mut alarmed = cluster.agent(&server, AgentOptions::ip(alarmed_ip));
    wait_alive(&server, pending_ip, 1).await;
    wait_alive(&server, alarmed_ip, 1).await;

    // One loss is alarmed before the crash...
    alarmed.kill9();
    wait_lost(&server, &alarmed_key).await;
    // ...the other is still in its grace when the server dies.
    pending.kill9();
    wait_alive(&server, pending_ip, 0).await;
    assert!(
        alarms_of(&server, "agent_lost", &pending_key).is_empty(),
        "the test needs the crash inside the grace: {:?}",
        server.alarms()
    );
    server.kill9();
    server.start_again().await;

    let alarm = wait_lost(&server, &pending_key).await;
    let message = alarm["message"].as_str().unwrap();
    assert!(message.contains("after the server restarted"), "{message}");
    // Both timers would have started with the server: a repeat would show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alarms_of(&server, "agent_lost", &pending_key).len(), 1);
    assert_eq!(
        alarms_of(&server, "agent_lost", &alarmed_key).len(),
        1,
        "alarmed before the crash, not again: {:?}",
        server.alarms()
    );

    // The alarm raised before the crash is still open: the return clears it.
    alarmed.restart();
    wait_alive(&server, alarmed_ip, 1).await;
    eventually(
        "agent_recovered after the restart",
        Duration::from_secs(15),
        || async {
            let got = alarms_of(&server, "agent_recovered", &alarmed_key);
            (got.len() == 1)
                .then_some(())
                .ok_or(format!("{:?}", server.alarms()))
        },
    )
    .await;
}

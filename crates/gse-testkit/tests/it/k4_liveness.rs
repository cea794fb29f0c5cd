//! K4: an agent that dies (SIGKILL) or hangs (SIGSTOP) drops to offline
//! within 30 s and raises exactly one lost-connection alarm, in the alarm
//! log and at the webhook; reconnecting clears it.

use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, ServerOptions, ServerProc, Webhook, eventually};
use nix::sys::signal::Signal;

fn count(server: &ServerProc, kind: &str, agent: &str) -> usize {
    server
        .alarms()
        .iter()
        .filter(|a| a["kind"] == kind && a["agent"] == agent)
        .count()
}

async fn wait_alive(server: &ServerProc, ip: &str, want: i64, within: Duration) {
    let api = &server.api;
    eventually(&format!("{ip} alive == {want}"), within, || async move {
        let got = api.alive(0, ip).await;
        (got == want).then_some(()).ok_or(format!("alive = {got}"))
    })
    .await;
}

#[tokio::test]
async fn k4_sigkilled_agent_goes_offline_with_one_alarm_then_recovers() {
    let cluster = Cluster::new();
    let hook = Webhook::start().await;
    let server = cluster
        .server(ServerOptions {
            webhook: Some(hook.url.clone()),
            ..ServerOptions::default()
        })
        .await;
    let mut victim = cluster.agent(&server, AgentOptions::ip("127.0.0.31"));
    let _bystander = cluster.agent(&server, AgentOptions::ip("127.0.0.32"));
    wait_alive(&server, "127.0.0.31", 1, Duration::from_secs(15)).await;
    wait_alive(&server, "127.0.0.32", 1, Duration::from_secs(15)).await;

    victim.kill9();
    wait_alive(&server, "127.0.0.31", 0, Duration::from_secs(30)).await;
    eventually(
        "agent_lost alarm in the log",
        Duration::from_secs(30),
        || async {
            (count(&server, "agent_lost", "0:127.0.0.31") == 1)
                .then_some(())
                .ok_or(format!("{:?}", server.alarms()))
        },
    )
    .await;
    // No second alarm for the same loss, none for the bystander.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&server, "agent_lost", "0:127.0.0.31"),
        1,
        "{:?}",
        server.alarms()
    );
    assert_eq!(count(&server, "agent_lost", "0:127.0.0.32"), 0);
    assert_eq!(server.api.alive(0, "127.0.0.32").await, 1);
    let alarm = server
        .alarms()
        .into_iter()
        .find(|a| a["kind"] == "agent_lost")
        .unwrap();
    assert_eq!(alarm["bk_agent_id"], victim.agent_id().unwrap().as_str());
    assert!(alarm["message"].as_str().unwrap().contains("0:127.0.0.31"));
    eventually(
        "agent_lost alarm at the webhook",
        Duration::from_secs(10),
        || async {
            let got = hook.received();
            got.iter()
                .any(|a| a["kind"] == "agent_lost" && a["agent"] == "0:127.0.0.31")
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    )
    .await;

    // The agent comes back: alive again, and the alarm is cleared once.
    victim.restart();
    wait_alive(&server, "127.0.0.31", 1, Duration::from_secs(15)).await;
    eventually("agent_recovered alarm", Duration::from_secs(10), || async {
        (count(&server, "agent_recovered", "0:127.0.0.31") == 1)
            .then_some(())
            .ok_or(format!("{:?}", server.alarms()))
    })
    .await;
    assert_eq!(count(&server, "agent_lost", "0:127.0.0.31"), 1);
}

#[tokio::test]
async fn k4_hung_agent_is_dropped_by_heartbeat_timeout() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.33"));
    wait_alive(&server, "127.0.0.33", 1, Duration::from_secs(15)).await;
    // Frozen: the TCP connection stays open, the heartbeats stop.
    agent.signal(Signal::SIGSTOP);
    wait_alive(&server, "127.0.0.33", 0, Duration::from_secs(30)).await;
    eventually("agent_lost alarm", Duration::from_secs(30), || async {
        (count(&server, "agent_lost", "0:127.0.0.33") == 1)
            .then_some(())
            .ok_or(format!("{:?}", server.alarms()))
    })
    .await;
    assert!(
        server.log().contains("no heartbeat for"),
        "the server log should say why"
    );
    agent.signal(Signal::SIGCONT);
    wait_alive(&server, "127.0.0.33", 1, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn k4_agent_reconnecting_within_grace_raises_nothing() {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            lost_grace: Duration::from_secs(10),
            ..ServerOptions::default()
        })
        .await;
    let mut agent = cluster.agent(&server, AgentOptions::ip("127.0.0.34"));
    wait_alive(&server, "127.0.0.34", 1, Duration::from_secs(15)).await;
    agent.restart();
    wait_alive(&server, "127.0.0.34", 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        server.alarms().is_empty(),
        "a quick restart is not an outage: {:?}",
        server.alarms()
    );
}

//! Issue 9, item 10 (the agent's side): reconnect backoff resets after a
//! short stable link, task processes inherit no descriptor the agent was
//! started with, and a stopping agent closes its links cleanly (TLS
//! close_notify), so the server logs a clean close rather than a broken one.

use std::sync::Arc;
use std::time::Duration;

use gse_agent::AgentConfig;
use gse_testkit::{AgentOptions, Cluster, ServerOptions, eventually};
use serde_json::json;

use crate::task_api::{start, wait_final};

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The delay the agent chose right after its `nth` (1-based) lost link.
fn delay_after_loss(log: &str, nth: usize) -> Option<u64> {
    let mut losses = 0;
    for line in log.lines() {
        if line.contains("link to the server lost") {
            losses += 1;
        } else if losses == nth && line.contains("waiting before the next connection attempt") {
            if let Some(value) = line.split("delay_ms=").nth(1) {
                return value.split_whitespace().next()?.parse().ok();
            }
            // Older agents logged a Duration's Debug form (`delay=6.4s`).
            let value = line.split("delay=").nth(1)?.split_whitespace().next()?;
            let (number, scale) = match value.strip_suffix("ms") {
                Some(n) => (n, 1.0),
                None => (value.strip_suffix('s')?, 1000.0),
            };
            return number.parse::<f64>().ok().map(|n| (n * scale) as u64);
        }
    }
    None
}

#[tokio::test]
async fn r9_10_backoff_resets_once_a_link_has_been_up_a_short_while() {
    const FIRST_STEP_MS: u64 = 400;
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let mut opts = AgentOptions::ip("127.0.9.1");
    opts.customize = Some(Arc::new(|c: &mut AgentConfig| {
        c.upstream.backoff_initial = Duration::from_millis(FIRST_STEP_MS);
        c.upstream.backoff_max = Duration::from_secs(60);
    }));
    let agent = cluster.agent(&server, opts);
    server.api.wait_alive("127.0.9.1").await;

    // A first outage long enough for several failed attempts: the delay grows.
    server.kill9();
    eventually("four failed attempts", Duration::from_secs(40), || async {
        let n = count(&agent.log(), "cannot connect");
        (n >= 4).then_some(()).ok_or(format!("{n} so far"))
    })
    .await;
    server.start_again().await;
    server.api.wait_alive("127.0.9.1").await;
    // The link now stays up for a while (longer than the agent's 3 s):
    // this wait is the scenario, not a readiness guess.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A short second outage: the agent starts again from the first step.
    server.kill9();
    let delay = eventually(
        "a delay after the second loss",
        Duration::from_secs(20),
        || async { delay_after_loss(&agent.log(), 2).ok_or(String::new()) },
    )
    .await;
    assert!(
        delay <= FIRST_STEP_MS,
        "after a link that was up 5 s the agent waits {delay} ms, not at most {FIRST_STEP_MS} ms"
    );
    server.start_again().await;
    server.api.wait_alive("127.0.9.1").await;
}

#[tokio::test]
async fn r9_10_task_processes_inherit_no_descriptor_the_agent_was_started_with() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let marker = cluster.path.join("inherited-marker");
    std::fs::write(&marker, b"x").unwrap();
    let mut opts = AgentOptions::ip("127.0.9.2");
    // A careless parent: the agent starts with descriptor 7 open.
    opts.launcher = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("exec 7<'{}'; exec \"$@\"", marker.display()),
        "sh".into(),
    ];
    let _agent = cluster.agent(&server, opts);
    server.api.wait_alive("127.0.9.2").await;

    let agents = ["0:127.0.9.2"];
    let task = start(&server.api, &agents, "ls -l /proc/self/fd/", json!({})).await;
    let entries = wait_final(&server.api, &task, &agents, Duration::from_secs(30)).await;
    let screen = entries[0]["screen"].as_str().unwrap_or_default();
    assert_eq!(entries[0]["script_exit_code"], 0, "{}", entries[0]);
    assert!(screen.contains("/proc/"), "ls listed nothing: {screen}");
    assert!(
        !screen.contains("inherited-marker"),
        "the task inherited the agent's descriptor: {screen}"
    );
    assert!(
        !screen.contains("socket:"),
        "the task inherited a socket: {screen}"
    );
}

#[tokio::test]
async fn r9_10_a_stopping_agent_closes_its_links_cleanly() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let mut agent = cluster.agent(&server, AgentOptions::ip("127.0.9.3"));
    server.api.wait_alive("127.0.9.3").await;
    eventually("the data link", Duration::from_secs(20), || async {
        (count(&server.log(), "data link up") >= 1)
            .then_some(())
            .ok_or(String::new())
    })
    .await;

    assert_eq!(agent.stop(), Some(0), "the agent did not stop cleanly");
    let closed = |needle: &'static str| {
        let server = &server;
        async move {
            eventually(needle, Duration::from_secs(15), || async {
                server
                    .log()
                    .lines()
                    .find(|l| l.contains(needle) && l.contains("127.0.9.3"))
                    .map(str::to_string)
                    .ok_or(String::new())
            })
            .await
        }
    };
    let data = closed("data link closed").await;
    assert!(
        data.contains("closed by the agent"),
        "the data link did not end cleanly: {data}"
    );
    let control = closed("agent disconnected").await;
    assert!(
        control.contains("agent shut down"),
        "the control link did not end cleanly: {control}"
    );
}

//! The agent's watchdog (issue 13 item 2) with real processes: `gse-agent
//! run` supervises a worker `gse-agent`; a worker that dies or goes over
//! its memory budget is started again (the watchdog's pid stays), the node
//! raises `agent_restarted` with the reason, the plugins the worker hosts
//! keep running, and a worker whose watchdog is gone stops.

use std::sync::Arc;
use std::time::Duration;

use gse_testkit::{
    AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc, Webhook, eventually,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::d_plugins::{Plugin, alive, op_code, status};

/// The worker the watchdog `pid` runs (its child `gse-agent`), if any.
fn worker_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split('\0').any(|a| a == "worker") && alive(*c as i32))
        })
}

/// Waits for a running worker other than `old`; returns its pid.
async fn new_worker(watchdog: u32, old: Option<u32>) -> u32 {
    eventually("a running worker", Duration::from_secs(30), || async {
        match worker_of(watchdog) {
            Some(w) if Some(w) != old => Ok(w),
            other => Err(format!("worker {other:?}")),
        }
    })
    .await
}

/// A server alarming to `hook`, and an agent on 127.0.0.1 under its
/// watchdog, adjusted by `tune`.
async fn watched(
    hook: &Webhook,
    tune: impl Fn(&mut gse_agent::AgentConfig) + Send + Sync + 'static,
) -> (Cluster, ServerProc, AgentProc) {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            webhook: Some(hook.url.clone()),
            customize: Some(Arc::new(|cfg| {
                cfg.proc.dispatch_interval = Duration::from_millis(50)
            })),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(
        &server,
        AgentOptions {
            customize: Some(Arc::new(move |cfg| {
                cfg.watchdog.enabled = true;
                cfg.watchdog.check_interval = Duration::from_millis(200);
                cfg.watchdog.backoff_initial = Duration::from_millis(200);
                cfg.plugin.check_interval = Duration::from_millis(300);
                tune(cfg);
            })),
            ..AgentOptions::ip("127.0.0.1")
        },
    );
    server.api.wait_alive("127.0.0.1").await;
    (cluster, server, agent)
}

/// The `agent_restarted` alarms the webhook got.
fn restarts(hook: &Webhook) -> Vec<Value> {
    hook.received()
        .into_iter()
        .filter(|a| a["kind"] == "agent_restarted")
        .collect()
}

async fn restart_alarm(hook: &Webhook, says: &str) -> Value {
    eventually(
        &format!("an agent_restarted alarm saying {says:?}"),
        Duration::from_secs(30),
        || async {
            restarts(hook)
                .into_iter()
                .find(|a| a["message"].as_str().is_some_and(|m| m.contains(says)))
                .ok_or_else(|| format!("{:?}", hook.received()))
        },
    )
    .await
}

#[tokio::test]
async fn w_a_killed_worker_is_restarted_its_plugin_keeps_running_and_the_node_alarms() {
    let hook = Webhook::start().await;
    let (_cluster, server, agent) = watched(&hook, |_| {}).await;
    let api = &server.api;
    let watchdog = agent.pid();
    let first = new_worker(watchdog, None).await;

    // A hosted plugin, started by the worker.
    let plugin = Plugin::new(&agent.dir, false);
    let (code, msg) = op_code(api, 3, "0:127.0.0.1", "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0, "{msg}");
    let plugin_pid = eventually("the plugin running", Duration::from_secs(20), || async {
        let info = status(api).await;
        match plugin.pid() {
            Some(p) if alive(p) && info["pid"] == p => Ok(p),
            other => Err(format!("pid file {other:?}, api {info}")),
        }
    })
    .await;

    // The worker crashes.
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let second = new_worker(watchdog, Some(first)).await;
    assert!(alive(watchdog as i32), "the watchdog's pid stays");
    let alarm = restart_alarm(&hook, "killed by signal 9 (SIGKILL)").await;
    assert_eq!(alarm["agent"], "0:127.0.0.1", "{alarm}");
    assert!(
        alarm["message"].as_str().unwrap().contains("restart 1 "),
        "{alarm}"
    );

    // The plugin kept running, and the new worker supervises it again.
    assert!(
        alive(plugin_pid),
        "the worker's death left its plugin alone"
    );
    eventually(
        "the new worker reports the same plugin",
        Duration::from_secs(20),
        || async {
            let info = status(api).await;
            (info["pid"] == plugin_pid && info["status"] == 1)
                .then_some(())
                .ok_or(format!("{info}"))
        },
    )
    .await;
    server.api.wait_alive("127.0.0.1").await;
    assert_eq!(
        restarts(&hook).len(),
        1,
        "one alarm per restart: {:?}",
        restarts(&hook)
    );

    // SIGTERM to the watchdog stops the worker too; the plugin stays.
    agent.signal(Signal::SIGTERM);
    eventually(
        "the worker stopped with its watchdog",
        Duration::from_secs(20),
        || async {
            (!alive(second as i32) && !alive(watchdog as i32))
                .then_some(())
                .ok_or_else(String::new)
        },
    )
    .await;
    assert!(alive(plugin_pid));
}

#[tokio::test]
async fn w_a_worker_over_its_memory_budget_is_restarted_with_the_reason() {
    let hook = Webhook::start().await;
    // Any worker is over 1 MiB: it is stopped after two checks (~0.4 s)
    // once up; backing off, a later one lives long enough to say why.
    let (_cluster, _server, agent) = watched(&hook, |cfg| {
        cfg.watchdog.memory_max_mb = 1;
        cfg.watchdog.memory_checks = 10;
        cfg.watchdog.check_interval = Duration::from_millis(300);
    })
    .await;
    let alarm = restart_alarm(&hook, "over its memory budget").await;
    let message = alarm["message"].as_str().unwrap();
    assert!(
        message.contains("over watchdog.memory_max_mb = 1 for 10 checks in a row"),
        "{message}"
    );
    assert!(alive(agent.pid() as i32), "the watchdog's pid stays");
}

#[tokio::test]
async fn w_a_worker_whose_watchdog_is_killed_stops() {
    let hook = Webhook::start().await;
    let (_cluster, _server, mut agent) = watched(&hook, |_| {}).await;
    let worker = new_worker(agent.pid(), None).await;
    agent.kill9();
    eventually(
        "the orphaned worker stopped",
        Duration::from_secs(10),
        || async {
            (!alive(worker as i32))
                .then_some(())
                .ok_or_else(String::new)
        },
    )
    .await;
}

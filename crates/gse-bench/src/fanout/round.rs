//! One round of the fan-out: start the command on every target, poll until
//! every entry is final, and time each entry two ways.
//!
//! - **seen**: from just before the `async_execute_script` POST until the
//!   answer of the first poll that shows the entry final. This is what a job
//!   platform sees, so it includes the poll granularity (`--poll-interval`)
//!   and the time of the poll itself.
//! - **server**: the entry's `end_time` (stamped by the agent, same clock
//!   here) minus the POST's start in unix ms; it does not depend on polling.
//!
//! Also kept: `dispatch` (the entry's `start_time`, when the agent began
//! running it, minus the POST's start), the POST's round trip, and each
//! poll's duration and answer size. Entries are told apart by
//! `bk_agent_id`; every target has one atomic task.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use gse_core::now_ms;
use gse_core::task::{STATUS_DISPATCHED, STATUS_RUNNING, STATUS_SUCCESS};
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::api::{ApiClient, ResultEntry};
use crate::procfs::rss_kib;

/// What every round does.
#[derive(Clone)]
pub struct RoundPlan {
    /// `cloud_id:ip` of every target.
    pub targets: Vec<String>,
    pub command: String,
    /// The `screen` a successful entry must show.
    pub expected_screen: String,
    pub timeout_s: u32,
    pub poll_every: Duration,
    /// A round still unfinished after this long fails.
    pub give_up_after: Duration,
    /// The server's pid, to sample its RSS at every poll.
    pub server_pid: String,
    /// With `--proxy`: the proxy's pid, whose CPU is measured too.
    pub proxy_pid: Option<String>,
    /// Index of the node each target is held by (by `cloud_id:ip`); empty
    /// on one node.
    pub node_of: HashMap<String, usize>,
    /// Nodes the targets are spread over.
    pub nodes: usize,
}

/// What one round measured; times in ms.
#[derive(Default)]
pub struct RoundFigures {
    pub seen_ms: Vec<f64>,
    pub server_ms: Vec<f64>,
    pub dispatch_ms: Vec<f64>,
    /// `server_ms` and `dispatch_ms` split by the node holding the agent
    /// (`--nodes N`): tells forwarding apart from the rest.
    pub server_ms_by_node: Vec<Vec<f64>>,
    pub dispatch_ms_by_node: Vec<Vec<f64>>,
    /// Round trip of the `async_execute_script` POST.
    pub api_start_ms: f64,
    /// Seen time of the last entry.
    pub last_ms: f64,
    pub poll_ms: Vec<f64>,
    pub poll_bytes: Vec<usize>,
    pub succeeded: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub server_rss_peak_kib: u64,
}

impl RoundFigures {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(why);
    }
}

/// Runs one round; an error is a failed API call, not a failed entry.
pub async fn run(api: &ApiClient, plan: &RoundPlan) -> Result<RoundFigures> {
    let mut figures = RoundFigures {
        server_ms_by_node: vec![Vec::new(); plan.nodes],
        dispatch_ms_by_node: vec![Vec::new(); plan.nodes],
        ..RoundFigures::default()
    };
    let began = Instant::now();
    let began_ms = now_ms();
    let task_id = api
        .execute(&plan.targets, &plan.command, plan.timeout_s)
        .await?;
    figures.api_start_ms = ms(began.elapsed());
    let mut pending: HashSet<&str> = plan.targets.iter().map(String::as_str).collect();
    let mut ticker = interval(plan.poll_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !pending.is_empty() {
        if began.elapsed() > plan.give_up_after {
            let left = pending.len() as u64;
            figures.fail(format!(
                "{left} entries of task {task_id} not final after {:?}",
                plan.give_up_after
            ));
            figures.failed += left - 1;
            break;
        }
        ticker.tick().await;
        let sent = Instant::now();
        let (entries, bytes) = api.results(&task_id).await?;
        let seen = began.elapsed();
        figures.poll_ms.push(ms(sent.elapsed()));
        figures.poll_bytes.push(bytes);
        sample_rss(&mut figures, &plan.server_pid);
        for e in entries.iter().filter(|e| is_final(e.status)) {
            if pending.remove(e.bk_agent_id.as_str()) {
                record(&mut figures, plan, e, ms(seen), began_ms);
            }
        }
    }
    Ok(figures)
}

fn is_final(status: i32) -> bool {
    !matches!(status, STATUS_DISPATCHED | STATUS_RUNNING)
}

/// Times one final entry and checks that it succeeded with the output.
fn record(f: &mut RoundFigures, plan: &RoundPlan, e: &ResultEntry, seen_ms: f64, began_ms: u64) {
    let since_post = |at: u64| at as f64 - began_ms as f64;
    f.seen_ms.push(seen_ms);
    f.last_ms = f.last_ms.max(seen_ms);
    let node = plan.node_of.get(e.bk_agent_id.as_str()).copied();
    let server = since_post(e.end_time);
    f.server_ms.push(server);
    if let Some(at) = node.and_then(|n| f.server_ms_by_node.get_mut(n)) {
        at.push(server);
    }
    if e.start_time > 0 {
        let dispatch = since_post(e.start_time);
        f.dispatch_ms.push(dispatch);
        if let Some(at) = node.and_then(|n| f.dispatch_ms_by_node.get_mut(n)) {
            at.push(dispatch);
        }
    }
    let ok = e.status == STATUS_SUCCESS && e.error_code == 0;
    if ok && e.screen == plan.expected_screen {
        f.succeeded += 1;
    } else if ok {
        f.fail(format!(
            "{}: succeeded with screen {:?}, expected {:?}",
            e.bk_agent_id, e.screen, plan.expected_screen
        ));
    } else {
        f.fail(format!(
            "{}: status {}, error_code {}: {}",
            e.bk_agent_id, e.status, e.error_code, e.error_msg
        ));
    }
}

fn sample_rss(f: &mut RoundFigures, pid: &str) {
    if let Ok(kib) = rss_kib(pid) {
        f.server_rss_peak_kib = f.server_rss_peak_kib.max(kib);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

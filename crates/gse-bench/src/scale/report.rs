//! The JSON line of `gse-bench scale` (fields: docs/BENCHMARKS.md,
//! "Scale (issue 11)").

use serde::Serialize;

use super::ScaleArgs;
use super::window::{Measured, NodeWindow};
use crate::api::NodeLoad;
use crate::cluster::node_id;
use crate::prom::{Histogram, Summary};

/// The figures.
const TARGET: &str = "every node's peak RSS under 700 MiB, Redis under half a core";
const RSS_TARGET_MIB: f64 = 700.0;
const REDIS_TARGET_PERCENT: f64 = 50.0;

/// One node over the window.
#[derive(Serialize, Debug)]
pub struct NodeFigures {
    node_id: String,
    /// Agents its `list_nodes` entry showed when all were up.
    agents_listed: u64,
    rss_ready_mib: f64,
    /// The most sampled during the window (every second).
    rss_peak_mib: f64,
    /// `VmHWM`: the most it ever held, the connect storm included.
    rss_hwm_mib: f64,
    /// % of one core.
    cpu_percent: f64,
    heartbeats_per_s: f64,
    /// Heartbeat writes to the store (one call each).
    batches_per_s: f64,
    heartbeats_per_batch: f64,
    /// Time of one heartbeat batch's write to Redis.
    store_write: Summary,
}

#[derive(Serialize, Debug)]
pub struct RedisFigures {
    cpu_percent: f64,
    rss_mib: f64,
    /// `total_commands_processed` over the window, per second.
    ops_per_s: f64,
    /// Redis' own `instantaneous_ops_per_sec` at the end, and the most
    /// sampled (every second).
    instantaneous_ops_per_sec: f64,
    instantaneous_ops_per_sec_max: f64,
}

/// The nodes' heartbeat batching, all nodes together.
#[derive(Serialize, Debug)]
pub struct HeartbeatFigures {
    /// Agents / heartbeat interval.
    expected_per_s: f64,
    /// Written to the store by the nodes (`gse_link_heartbeats_total`).
    received_per_s: f64,
    /// `gse_link_heartbeat_batches_total`.
    batches_per_s: f64,
    per_batch: f64,
    store_write: Summary,
}

/// The simulated agents, all child processes together.
#[derive(Serialize, Debug)]
pub struct SimFigures {
    processes: u32,
    /// TCP, TLS or Register failures while connecting (the run stops
    /// before measuring if there is any).
    register_failures: u64,
    /// Failed TLS handshakes the nodes counted (`gse_link_tls_failures_total`).
    node_tls_failures: u64,
    /// Links the nodes closed after registering, the whole run.
    links_lost: u64,
    heartbeats_sent_per_s: f64,
    heartbeats_acked_per_s: f64,
    cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// The JSON line.
#[derive(Serialize, Debug)]
pub struct Report {
    bench: &'static str,
    nodes: u32,
    agents_per_node: u32,
    agents: u32,
    heartbeat_interval_ms: u64,
    /// First connect -> every node listed with all its agents.
    ready_s: f64,
    measure_s: f64,
    per_node: Vec<NodeFigures>,
    max_rss_peak_mib: f64,
    redis: RedisFigures,
    heartbeats: HeartbeatFigures,
    sim: SimFigures,
    cores: usize,
    target: &'static str,
    meets_target: bool,
    /// Why the window ended early, if it did.
    #[serde(skip)]
    window_failure: Option<String>,
}

impl Report {
    pub fn new(
        args: &ScaleArgs,
        ready_s: f64,
        listed: &[NodeLoad],
        ready_rss_kib: &[u64],
        m: &Measured,
    ) -> Self {
        let secs = m.seconds.max(1e-9);
        let per_s = |n: u64| r1(n as f64 / secs);
        let per_node: Vec<NodeFigures> = m
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| node_figures(i, n, listed, ready_rss_kib[i], secs))
            .collect();
        let heartbeats: u64 = m
            .nodes
            .iter()
            .map(|n| n.after.heartbeats.saturating_sub(n.before.heartbeats))
            .sum();
        let batches: u64 = m
            .nodes
            .iter()
            .map(|n| n.after.batches.saturating_sub(n.before.batches))
            .sum();
        let sum_store = |pick: fn(&NodeWindow) -> Histogram| {
            m.nodes
                .iter()
                .fold(Histogram::default(), |acc, n| acc.plus(&pick(n)))
        };
        let store_before = sum_store(|n| n.before.store_write);
        let store_after = sum_store(|n| n.after.store_write);
        let interval = args.heartbeat_interval();
        let commands = m
            .redis
            .after
            .total_commands_processed
            .saturating_sub(m.redis.before.total_commands_processed);
        let max_rss_peak_mib = per_node.iter().map(|n| n.rss_peak_mib).fold(0.0, f64::max);
        let redis_cpu_percent = r1(m.redis.cpu_percent);
        let (sb, sa) = (&m.sims_before, &m.sims_after);
        let mut report = Report {
            bench: "scale",
            nodes: args.nodes,
            agents_per_node: args.agents_per_node,
            agents: args.agents(),
            heartbeat_interval_ms: interval.as_millis() as u64,
            ready_s: r2(ready_s),
            measure_s: r2(m.seconds),
            per_node,
            max_rss_peak_mib,
            redis: RedisFigures {
                cpu_percent: redis_cpu_percent,
                rss_mib: mib(m.redis.rss_kib),
                ops_per_s: per_s(commands),
                instantaneous_ops_per_sec: m.redis.after.instantaneous_ops_per_sec,
                instantaneous_ops_per_sec_max: m.redis.instantaneous_max,
            },
            heartbeats: HeartbeatFigures {
                expected_per_s: r1(f64::from(args.agents()) / interval.as_secs_f64()),
                received_per_s: per_s(heartbeats),
                batches_per_s: per_s(batches),
                per_batch: ratio(heartbeats, batches),
                store_write: store_after.since(&store_before),
            },
            sim: SimFigures {
                processes: m.nodes.len() as u32,
                register_failures: sa.failed,
                node_tls_failures: m.nodes.iter().map(|n| n.after.tls_failures).sum(),
                links_lost: sa.lost,
                heartbeats_sent_per_s: per_s(sa.heartbeats_sent.saturating_sub(sb.heartbeats_sent)),
                heartbeats_acked_per_s: per_s(
                    sa.heartbeats_acked.saturating_sub(sb.heartbeats_acked),
                ),
                cpu_percent: r1(m.sims_cpu_percent),
                first_error: sa.first_error.clone(),
            },
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            target: TARGET,
            meets_target: false,
            window_failure: m.failure.clone(),
        };
        report.meets_target = report.failure().is_none()
            && max_rss_peak_mib < RSS_TARGET_MIB
            && redis_cpu_percent < REDIS_TARGET_PERCENT;
        report
    }

    /// Why the run does not describe N x K heartbeating agents, if so.
    pub fn failure(&self) -> Option<String> {
        if let Some(f) = &self.window_failure {
            return Some(f.clone());
        }
        (self.sim.links_lost > 0).then(|| {
            format!(
                "{} of {} agents' links were closed by the nodes during the run; see the nodes' server.log",
                self.sim.links_lost, self.agents
            )
        })
    }
}

fn node_figures(
    i: usize,
    n: &NodeWindow,
    listed: &[NodeLoad],
    ready_rss_kib: u64,
    secs: f64,
) -> NodeFigures {
    let id = node_id(i as u32);
    let heartbeats = n.after.heartbeats.saturating_sub(n.before.heartbeats);
    let batches = n.after.batches.saturating_sub(n.before.batches);
    NodeFigures {
        agents_listed: listed
            .iter()
            .find(|l| l.node_id == id)
            .map_or(0, |l| l.agents),
        node_id: id,
        rss_ready_mib: mib(ready_rss_kib),
        rss_peak_mib: mib(n.rss_peak_kib),
        rss_hwm_mib: mib(n.rss_hwm_kib),
        cpu_percent: r1(n.cpu_percent),
        heartbeats_per_s: r1(heartbeats as f64 / secs),
        batches_per_s: r1(batches as f64 / secs),
        heartbeats_per_batch: ratio(heartbeats, batches),
        store_write: n.after.store_write.since(&n.before.store_write),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { r1(a as f64 / b as f64) }
}

fn mib(kib: u64) -> f64 {
    r1(kib as f64 / 1024.0)
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

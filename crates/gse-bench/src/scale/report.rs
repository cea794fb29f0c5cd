//! The JSON line of `gse-bench scale` (fields: docs/BENCHMARKS.md,
//! "Scale (issue 11)").

use std::collections::BTreeMap;

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
    /// Calls per second of each command run in the window (commands a
    /// Lua script runs are counted as well as its `eval`).
    commands_per_s: BTreeMap<String, f64>,
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
    /// Redis commands per heartbeat received, all traffic included.
    redis_ops_per_heartbeat: f64,
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
                commands_per_s: per_command(&m.redis.calls_before, &m.redis.calls_after, secs),
            },
            heartbeats: HeartbeatFigures {
                expected_per_s: r1(f64::from(args.agents()) / interval.as_secs_f64()),
                received_per_s: per_s(heartbeats),
                batches_per_s: per_s(batches),
                per_batch: ratio(heartbeats, batches),
                redis_ops_per_heartbeat: ratio(commands, heartbeats),
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

/// Calls per second of every command called in the window.
fn per_command(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(name, &calls)| {
            let n = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (n > 0).then(|| (name.clone(), r1(n as f64 / secs)))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_info::RedisStats;
    use crate::scale::window::{NodeMetrics, RedisWindow};
    use crate::sim::process::Counters;

    fn args() -> ScaleArgs {
        ScaleArgs {
            nodes: 2,
            agents_per_node: 1000,
            measure_s: 10,
            heartbeat_interval_ms: Some(1000),
            concurrency: 8,
            ready_within: std::time::Duration::from_secs(1),
            server_bin: None,
            keep_dir: false,
        }
    }

    /// Two nodes that each took 10,000 heartbeats in 10 batches over 10 s,
    /// with Redis at `redis_cpu` % and node 2 at `rss_mib` at its peak.
    fn measured(rss_mib: u64, redis_cpu: f64, lost: u64) -> Measured {
        let node = |rss_kib| NodeWindow {
            rss_peak_kib: rss_kib,
            rss_hwm_kib: rss_kib,
            cpu_percent: 12.0,
            before: NodeMetrics::default(),
            after: NodeMetrics {
                heartbeats: 10_000,
                batches: 10,
                store_write: Histogram {
                    sum: 0.02,
                    count: 10.0,
                    max: 0.004,
                },
                tls_failures: 0,
            },
        };
        let stats = |total| RedisStats {
            total_commands_processed: total,
            instantaneous_ops_per_sec: 30.0,
        };
        let calls = |n| BTreeMap::from([("eval".to_string(), n), ("info".to_string(), 5)]);
        Measured {
            seconds: 10.0,
            nodes: vec![node(100 * 1024), node(rss_mib * 1024)],
            redis: RedisWindow {
                cpu_percent: redis_cpu,
                rss_kib: 2048,
                before: stats(1000),
                after: stats(1300),
                instantaneous_max: 40.0,
                calls_before: calls(0),
                calls_after: calls(20),
            },
            sims_before: Counters::default(),
            sims_after: Counters {
                lost,
                heartbeats_sent: 20_000,
                heartbeats_acked: 20_000,
                ..Counters::default()
            },
            sims_cpu_percent: 30.0,
            failure: None,
        }
    }

    fn report(m: &Measured) -> Report {
        let listed: Vec<NodeLoad> = (0..2)
            .map(|i| NodeLoad {
                node_id: node_id(i),
                agents: 1000,
            })
            .collect();
        Report::new(&args(), 3.0, &listed, &[50 * 1024, 60 * 1024], m)
    }

    #[test]
    fn figures_are_rates_over_the_window() {
        let r = report(&measured(300, 10.0, 0));
        assert_eq!(r.agents, 2000);
        assert_eq!(r.heartbeats.expected_per_s, 2000.0);
        assert_eq!(r.heartbeats.received_per_s, 2000.0);
        assert_eq!(r.heartbeats.batches_per_s, 2.0);
        assert_eq!(r.heartbeats.per_batch, 1000.0);
        assert_eq!(r.heartbeats.store_write.mean_ms, 2.0);
        assert_eq!(r.redis.ops_per_s, 30.0);
        assert_eq!(r.redis.commands_per_s.get("eval"), Some(&2.0));
        assert!(
            !r.redis.commands_per_s.contains_key("info"),
            "no calls in the window"
        );
        assert_eq!(r.per_node[1].agents_listed, 1000);
        assert_eq!(r.per_node[1].rss_ready_mib, 60.0);
        assert_eq!(r.max_rss_peak_mib, 300.0);
        assert!(r.meets_target && r.failure().is_none());
    }

    #[test]
    fn one_node_over_700_mib_or_redis_over_half_a_core_misses_the_target() {
        assert!(!report(&measured(700, 10.0, 0)).meets_target);
        assert!(!report(&measured(300, 50.0, 0)).meets_target);
    }

    #[test]
    fn lost_links_or_an_early_end_fail_the_run() {
        let r = report(&measured(300, 10.0, 3));
        assert!(!r.meets_target);
        assert!(
            r.failure().unwrap().contains("3 of 2000"),
            "{:?}",
            r.failure()
        );
        let mut m = measured(300, 10.0, 0);
        m.failure = Some("the simulated agents of x exited".into());
        assert_eq!(report(&m).failure(), m.failure);
    }
}

//! The JSON line of `gse-bench fanout`: the latencies of every entry of
//! every round, the API's own times, and the server's memory and CPU, with
//! the DESIGN.md target they are measured against.

use serde::Serialize;

use super::metrics::ServerMetrics;
use super::round::RoundFigures;

/// The DESIGN.md / issue figure this bench is measured against.
pub const TARGET: &str = "p50 < 1000 ms, p99 < 2000 ms for 10000 agents on 2 cores";
const TARGET_P50_MS: f64 = 1000.0;
const TARGET_P99_MS: f64 = 2000.0;
/// Issue 11's figure for `--nodes N`, measured against a one-node run.
pub const CLUSTER_TARGET: &str =
    "seen p50 and p99 across the nodes at most 1.3 x the same run on one node";
const CLUSTER_MAX_RATIO: f64 = 1.3;
/// Issue 12's figure for `--proxy`, measured against direct agents.
pub const PROXY_TARGET: &str =
    "seen p50 and p99 through one proxy at most 1.2 x the same agents connected directly";
pub const PROXY_MAX_RATIO: f64 = 1.2;

/// The proxy of a `--proxy` run: its memory and CPU.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct ProxyFigures {
    rss_mib_idle: f64,
    rss_mib_ready: f64,
    rss_mib_after: f64,
    /// While rounds ran, % of one core.
    cpu_percent: f64,
}

impl ProxyFigures {
    /// RSS (KiB) idle, with every agent connected, after the rounds.
    pub fn new((idle, ready, after): (u64, u64, u64), cpu_percent: f64) -> Self {
        ProxyFigures {
            rss_mib_idle: mib(idle),
            rss_mib_ready: mib(ready),
            rss_mib_after: mib(after),
            cpu_percent: r2(cpu_percent),
        }
    }
}

/// Percentiles (nearest rank) of a set of times, ms.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Stats {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = (q * v.len() as f64).ceil() as usize;
            r1(v[rank.clamp(1, v.len()) - 1])
        };
        Stats {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// One round in brief.
#[derive(Serialize, Debug)]
pub struct RoundLine {
    seen_p50_ms: f64,
    seen_p99_ms: f64,
    server_p99_ms: f64,
    last_result_ms: f64,
    api_start_ms: f64,
    polls: usize,
}

/// The entries of the agents one node holds.
#[derive(Serialize, Debug)]
pub struct NodeLine {
    node: usize,
    dispatch_ms: Stats,
    server_ms: Stats,
}

/// Figures that are not per entry, gathered by the run.
pub struct RunFigures {
    pub mode: &'static str,
    /// Server nodes the agents were spread over.
    pub nodes: u32,
    pub executor: &'static str,
    pub agents: u32,
    pub command: String,
    pub poll_interval_ms: f64,
    /// From the first connect (or spawn) until every agent was alive.
    pub ready_s: f64,
    pub server_idle_rss_kib: u64,
    pub server_ready_rss_kib: u64,
    pub server_after_rss_kib: u64,
    pub server_cpu_percent: f64,
    pub bench_cpu_percent: f64,
    /// Real mode: all agent processes together.
    pub agents_rss_kib: Option<u64>,
    pub server_metrics: ServerMetrics,
    /// `--proxy`: the proxy's figures.
    pub proxy: Option<ProxyFigures>,
}

/// One run's figures; field order is the order of the JSON line.
#[derive(Serialize, Debug)]
pub struct Report {
    bench: &'static str,
    mode: &'static str,
    nodes: u32,
    executor: &'static str,
    agents: u32,
    rounds: usize,
    command: String,
    poll_interval_ms: f64,
    entries: u64,
    succeeded: u64,
    failed: u64,
    /// POST start -> the poll answer that first showed the entry final.
    seen_ms: Stats,
    /// POST start -> the entry's end_time (no polling in it).
    server_ms: Stats,
    /// POST start -> the entry's start_time (the agent began running it).
    dispatch_ms: Stats,
    /// `--nodes N`: dispatch and server times of the agents each node
    /// holds (node 1, which is asked, first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    by_node: Vec<NodeLine>,
    /// Round trip of the async_execute_script POST.
    api_start_ms: Stats,
    /// Per round, the seen time of its last entry.
    last_result_ms: Stats,
    polls: usize,
    /// Round trip of one get_execute_script_result poll of every entry.
    poll_ms: Stats,
    poll_answer_bytes_max: usize,
    per_round: Vec<RoundLine>,
    ready_s: f64,
    server_rss_mib_idle: f64,
    server_rss_mib_ready: f64,
    server_rss_mib_peak: f64,
    server_rss_mib_after: f64,
    server_cpu_percent: f64,
    bench_cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    agents_rss_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<ProxyFigures>,
    /// `--proxy`: how the cores were shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores_split: Option<String>,
    /// The server's own histograms over the whole run.
    server_metrics: ServerMetrics,
    cores: usize,
    /// `--nodes N` with a reference: the one-node run's seen times and
    /// entries that failed, and this run's p50 and p99 over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_seen_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_p99: Option<f64>,
    /// Whether the one-node target (DESIGN.md) holds for this run; with a
    /// reference, `target` and `meets_target` are the cluster's ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    meets_single_node_target: Option<bool>,
    target: &'static str,
    meets_target: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_failure: Option<String>,
}

impl Report {
    pub fn new(run: RunFigures, rounds: &[RoundFigures]) -> Self {
        let all = |f: fn(&RoundFigures) -> &Vec<f64>| -> Vec<f64> {
            rounds.iter().flat_map(|r| f(r).iter().copied()).collect()
        };
        let seen_ms = Stats::of(&all(|r| &r.seen_ms));
        let per_round: Vec<f64> = rounds.iter().map(|r| r.last_ms).collect();
        let api_start: Vec<f64> = rounds.iter().map(|r| r.api_start_ms).collect();
        let succeeded = rounds.iter().map(|r| r.succeeded).sum();
        let failed = rounds.iter().map(|r| r.failed).sum();
        Report {
            bench: "fanout",
            mode: run.mode,
            nodes: run.nodes,
            executor: run.executor,
            agents: run.agents,
            rounds: rounds.len(),
            command: run.command,
            poll_interval_ms: run.poll_interval_ms,
            entries: succeeded + failed,
            succeeded,
            failed,
            seen_ms,
            server_ms: Stats::of(&all(|r| &r.server_ms)),
            dispatch_ms: Stats::of(&all(|r| &r.dispatch_ms)),
            by_node: by_node(rounds),
            api_start_ms: Stats::of(&api_start),
            last_result_ms: Stats::of(&per_round),
            polls: rounds.iter().map(|r| r.poll_ms.len()).sum(),
            poll_ms: Stats::of(&all(|r| &r.poll_ms)),
            poll_answer_bytes_max: rounds
                .iter()
                .flat_map(|r| r.poll_bytes.iter().copied())
                .max()
                .unwrap_or(0),
            per_round: rounds.iter().map(round_line).collect(),
            ready_s: r2(run.ready_s),
            server_rss_mib_idle: mib(run.server_idle_rss_kib),
            server_rss_mib_ready: mib(run.server_ready_rss_kib),
            server_rss_mib_peak: mib(peak_rss(rounds).max(run.server_after_rss_kib)),
            server_rss_mib_after: mib(run.server_after_rss_kib),
            server_cpu_percent: r2(run.server_cpu_percent),
            bench_cpu_percent: r2(run.bench_cpu_percent),
            agents_rss_mib: run.agents_rss_kib.map(mib),
            proxy: run.proxy,
            cores_split: None,
            server_metrics: run.server_metrics,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            reference_seen_ms: None,
            reference_failed: None,
            ratio_p50: None,
            ratio_p99: None,
            meets_single_node_target: None,
            target: TARGET,
            meets_target: failed == 0 && seen_ms.p50 < TARGET_P50_MS && seen_ms.p99 < TARGET_P99_MS,
            first_failure: rounds.iter().find_map(|r| r.first_failure.clone()),
        }
    }

    /// Measures this (cluster) run against `reference`, the same agents on
    /// one node: the target becomes the ratio of the seen times.
    pub fn compare(&mut self, reference: &Report) {
        self.compare_to(reference, (CLUSTER_TARGET, CLUSTER_MAX_RATIO));
    }

    /// Measures this run against `reference` with `target`: at most
    /// `max_ratio` times its seen p50 and p99.
    pub fn compare_to(&mut self, reference: &Report, (target, max_ratio): (&'static str, f64)) {
        let ratio = |a: f64, b: f64| if b > 0.0 { r2(a / b) } else { f64::INFINITY };
        let p50 = ratio(self.seen_ms.p50, reference.seen_ms.p50);
        let p99 = ratio(self.seen_ms.p99, reference.seen_ms.p99);
        self.reference_seen_ms = Some(reference.seen_ms);
        self.reference_failed = Some(reference.failed);
        self.ratio_p50 = Some(p50);
        self.ratio_p99 = Some(p99);
        self.meets_single_node_target = Some(self.meets_target);
        self.target = target;
        self.meets_target =
            self.failed == 0 && reference.failed == 0 && p50 <= max_ratio && p99 <= max_ratio;
    }

    /// Why the run was not clean: an entry that did not succeed with the
    /// expected output.
    pub fn failure(&self) -> Option<String> {
        (self.failed > 0 || self.entries == 0).then(|| {
            format!(
                "{} of {} entries did not succeed; first: {}",
                self.failed,
                self.entries,
                self.first_failure.as_deref().unwrap_or("none")
            )
        })
    }
}

fn by_node(rounds: &[RoundFigures]) -> Vec<NodeLine> {
    let nodes = rounds.first().map_or(0, |r| r.server_ms_by_node.len());
    if nodes < 2 {
        return Vec::new();
    }
    let of = |n: usize, f: fn(&RoundFigures) -> &Vec<Vec<f64>>| -> Vec<f64> {
        rounds
            .iter()
            .flat_map(|r| f(r).get(n).into_iter().flatten().copied())
            .collect()
    };
    (0..nodes)
        .map(|n| NodeLine {
            node: n + 1,
            dispatch_ms: Stats::of(&of(n, |r| &r.dispatch_ms_by_node)),
            server_ms: Stats::of(&of(n, |r| &r.server_ms_by_node)),
        })
        .collect()
}

fn round_line(r: &RoundFigures) -> RoundLine {
    let seen = Stats::of(&r.seen_ms);
    RoundLine {
        seen_p50_ms: seen.p50,
        seen_p99_ms: seen.p99,
        server_p99_ms: Stats::of(&r.server_ms).p99,
        last_result_ms: r1(r.last_ms),
        api_start_ms: r1(r.api_start_ms),
        polls: r.poll_ms.len(),
    }
}

fn peak_rss(rounds: &[RoundFigures]) -> u64 {
    rounds
        .iter()
        .map(|r| r.server_rss_peak_kib)
        .max()
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    r2(kib as f64 / 1024.0)
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Stats::of(&[7.0]).p50, 7.0);
        assert_eq!(Stats::of(&[]).max, 0.0);
    }

    fn report(nodes: u32, seen: &[f64], failed: u64) -> Report {
        let round = RoundFigures {
            seen_ms: seen.to_vec(),
            succeeded: seen.len() as u64 - failed,
            failed,
            ..RoundFigures::default()
        };
        let run = RunFigures {
            mode: "simulated",
            nodes,
            executor: "simulation",
            agents: seen.len() as u32,
            command: "echo hello".into(),
            poll_interval_ms: 50.0,
            ready_s: 1.0,
            server_idle_rss_kib: 0,
            server_ready_rss_kib: 0,
            server_after_rss_kib: 0,
            server_cpu_percent: 0.0,
            bench_cpu_percent: 0.0,
            agents_rss_kib: None,
            server_metrics: ServerMetrics::default(),
            proxy: None,
        };
        Report::new(run, &[round])
    }

    #[test]
    fn a_cluster_run_is_measured_by_its_ratio_to_the_reference() {
        let reference = report(1, &[100.0, 200.0], 0);
        let mut within = report(3, &[120.0, 260.0], 0);
        within.compare(&reference);
        assert_eq!((within.ratio_p50, within.ratio_p99), (Some(1.2), Some(1.3)));
        assert!(within.meets_target, "1.2 and 1.3 are within 1.3");
        assert_eq!(within.target, CLUSTER_TARGET);

        let mut slow = report(3, &[100.0, 300.0], 0);
        slow.compare(&reference);
        assert_eq!(slow.ratio_p99, Some(1.5));
        assert!(!slow.meets_target, "p99 1.5 x the reference");

        let mut failing_reference = report(3, &[100.0, 200.0], 0);
        failing_reference.compare(&report(1, &[100.0, 200.0], 1));
        assert!(
            !failing_reference.meets_target,
            "a reference with failed entries measures nothing"
        );
    }
}

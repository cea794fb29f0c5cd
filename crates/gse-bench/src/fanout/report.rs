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

/// Figures that are not per entry, gathered by the run.
pub struct RunFigures {
    pub mode: &'static str,
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
}

/// One run's figures; field order is the order of the JSON line.
#[derive(Serialize, Debug)]
pub struct Report {
    bench: &'static str,
    mode: &'static str,
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
    /// The server's own histograms over the whole run.
    server_metrics: ServerMetrics,
    cores: usize,
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
            server_metrics: run.server_metrics,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            target: TARGET,
            meets_target: failed == 0 && seen_ms.p50 < TARGET_P50_MS && seen_ms.p99 < TARGET_P99_MS,
            first_failure: rounds.iter().find_map(|r| r.first_failure.clone()),
        }
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
}

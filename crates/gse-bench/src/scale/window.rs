//! The measured window of `gse-bench scale`: the nodes' `/metrics` and
//! Redis' `INFO stats` and `commandstats` read at both ends (counters as deltas), CPU of
//! every process from `/proc` over the window, and the nodes' RSS and
//! Redis' instantaneous ops/s sampled every [`SAMPLE_EVERY`] for their
//! peaks. A child that exits during the window ends it early, as a
//! failure of the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_server::role::api::AppConfig;
use tokio::time::{Instant, sleep};

use crate::api::ApiClient;
use crate::cluster::BenchCluster;
use crate::procfs::{CpuMark, peak_rss_kib, rss_kib};
use crate::prom::{Histogram, counter};
use crate::redis_info::{self, RedisStats};
use crate::sim::process::{Counters, SimProcess};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const HEARTBEATS: &str = "gse_link_heartbeats_total";
const BATCHES: &str = "gse_link_heartbeat_batches_total";
const STORE_WRITE: &str = "gse_link_heartbeat_store_seconds";
const TLS_FAILURES: &str = "gse_link_tls_failures_total";

/// One node's metrics at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeMetrics {
    pub heartbeats: u64,
    pub batches: u64,
    pub store_write: Histogram,
    pub tls_failures: u64,
}

impl NodeMetrics {
    fn parse(text: &str) -> Self {
        NodeMetrics {
            heartbeats: counter(text, HEARTBEATS),
            batches: counter(text, BATCHES),
            store_write: Histogram::read(text, STORE_WRITE, ""),
            tls_failures: counter(text, TLS_FAILURES),
        }
    }
}

/// Everything counted, at one moment.
struct Snapshot {
    nodes: Vec<NodeMetrics>,
    redis: RedisStats,
    redis_calls: BTreeMap<String, u64>,
    sims: Counters,
}

/// One node over the window.
pub struct NodeWindow {
    pub rss_peak_kib: u64,
    /// `VmHWM` at the end: the most it ever held, connecting included.
    pub rss_hwm_kib: u64,
    pub cpu_percent: f64,
    pub before: NodeMetrics,
    pub after: NodeMetrics,
}

/// Redis over the window.
pub struct RedisWindow {
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub before: RedisStats,
    pub after: RedisStats,
    /// Calls by command at both ends (`INFO commandstats`).
    pub calls_before: BTreeMap<String, u64>,
    pub calls_after: BTreeMap<String, u64>,
    /// The highest `instantaneous_ops_per_sec` sampled.
    pub instantaneous_max: f64,
}

/// What the window measured.
pub struct Measured {
    pub seconds: f64,
    pub nodes: Vec<NodeWindow>,
    pub redis: RedisWindow,
    /// The children's counters at both ends.
    pub sims_before: Counters,
    pub sims_after: Counters,
    /// All children together, % of one core.
    pub sims_cpu_percent: f64,
    /// Why the window ended early, if it did.
    pub failure: Option<String>,
}

/// Measures for `length`; see the module header.
pub async fn measure(
    cluster: &BenchCluster,
    app: &AppConfig,
    sims: &mut [SimProcess],
    length: Duration,
) -> Result<Measured> {
    let clients = cluster
        .nodes
        .iter()
        .map(|n| ApiClient::new(n.api, app))
        .collect::<Result<Vec<_>>>()?;
    let pids: Vec<String> = cluster.nodes.iter().map(|n| n.proc_id()).collect();
    let redis_pid = cluster.services.redis_proc_id();
    let redis = cluster.services.redis;
    eprintln!("measuring for {length:?}");
    let before = snapshot(&clients, redis, sims).await?;
    let node_cpu = pids
        .iter()
        .map(|p| CpuMark::now(p))
        .collect::<Result<Vec<_>>>()?;
    let redis_cpu = CpuMark::now(&redis_pid)?;
    let sim_cpu = sims
        .iter()
        .map(|s| CpuMark::now(&s.proc_id()))
        .collect::<Result<Vec<_>>>()?;
    let began = Instant::now();
    let mut peaks = pids
        .iter()
        .map(|p| rss_kib(p))
        .collect::<Result<Vec<_>>>()?;
    let mut instantaneous_max = before.redis.instantaneous_ops_per_sec;
    let mut failure = None;
    while began.elapsed() < length {
        sleep(SAMPLE_EVERY.min(length.saturating_sub(began.elapsed()))).await;
        for (i, (peak, pid)) in peaks.iter_mut().zip(&pids).enumerate() {
            let now = rss_kib(pid).with_context(|| {
                format!("node-{} (pid {pid}) is gone; see its server.log", i + 1)
            })?;
            *peak = (*peak).max(now);
        }
        match redis_info::stats(redis).await {
            Ok(s) => instantaneous_max = instantaneous_max.max(s.instantaneous_ops_per_sec),
            Err(e) => eprintln!("cannot sample Redis: {e:#}"),
        }
        if let Some(e) = sims.iter_mut().find_map(|s| s.check_running().err()) {
            failure = Some(format!("{e:#} during the measured window"));
            break;
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    // CPU before the closing scrapes, which add work of their own.
    let cpu = node_cpu
        .iter()
        .map(CpuMark::percent_since)
        .collect::<Result<Vec<_>>>()?;
    let redis_cpu_percent = redis_cpu.percent_since()?;
    // A child that exited has no /proc entry left: it counts as 0.
    let sims_cpu_percent = sim_cpu.iter().filter_map(|m| m.percent_since().ok()).sum();
    let after = snapshot(&clients, redis, sims).await?;
    let mut nodes = Vec::with_capacity(pids.len());
    for (i, pid) in pids.iter().enumerate() {
        nodes.push(NodeWindow {
            rss_peak_kib: peaks[i].max(rss_kib(pid)?),
            rss_hwm_kib: peak_rss_kib(pid)?,
            cpu_percent: cpu[i],
            before: before.nodes[i],
            after: after.nodes[i],
        });
    }
    Ok(Measured {
        seconds,
        nodes,
        redis: RedisWindow {
            cpu_percent: redis_cpu_percent,
            rss_kib: rss_kib(&redis_pid)?,
            before: before.redis,
            after: after.redis,
            calls_before: before.redis_calls,
            calls_after: after.redis_calls,
            instantaneous_max: instantaneous_max.max(after.redis.instantaneous_ops_per_sec),
        },
        sims_before: before.sims,
        sims_after: after.sims,
        sims_cpu_percent,
        failure,
    })
}

/// Every node's metrics page, Redis' stats and the children's counters.
async fn snapshot(
    clients: &[ApiClient],
    redis: SocketAddr,
    sims: &[SimProcess],
) -> Result<Snapshot> {
    let mut nodes = Vec::with_capacity(clients.len());
    for (i, api) in clients.iter().enumerate() {
        let text = api
            .metrics_text()
            .await
            .with_context(|| format!("cannot read node-{}'s metrics", i + 1))?;
        nodes.push(NodeMetrics::parse(&text));
    }
    let all: Vec<Counters> = sims.iter().filter_map(SimProcess::counters).collect();
    Ok(Snapshot {
        nodes,
        redis: redis_info::stats(redis).await?,
        redis_calls: redis_info::command_calls(redis).await?,
        sims: Counters::sum(&all),
    })
}

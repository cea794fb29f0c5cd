//! `gse-bench scale` (issue 11, "Scale"): N cluster nodes (default 5)
//! each holding K heartbeating simulated agents (default 19,000): the
//! nodes' RSS and CPU, Redis' CPU and commands per second, and how the
//! nodes batch heartbeats into Redis. Target: every node under 700 MiB,
//! Redis under half a core.
//!
//! Start at [`run`]: ZooKeeper + Redis + N nodes ([`crate::cluster`], with
//! `[cluster] balance = false`, so agents stay where they connect) -> one
//! `sim-agents` child process per node holding that node's K agents
//! ([`crate::sim::process`]: a process here may hold 20,000 descriptors)
//! -> every child connected, and node 1's `list_nodes` shows K agents on
//! every node -> one heartbeat interval of warm-up -> the window
//! ([`window`]) -> one [`report::Report`].

mod report;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use gse_server::role::api::AppConfig;
use gse_server::role::link::LinkConfig;
use tokio::time::{Instant, sleep};

use crate::BenchOutput;
use crate::api::{ApiClient, NodeLoad};
use crate::cluster::{BenchCluster, wait_members};
use crate::procfs::{check_fd_limit_of, raise_fd_limit, rss_kib};
use crate::server::ServerOptions;
use crate::sim::process::{Counters, SimProcess};
use report::Report;

const APP_CODE: &str = "gse-bench";
/// How often the waits print their progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Flags of `gse-bench scale`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Cluster nodes, each with its own child process of simulated agents.
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// Simulated agents held by each node (each child process holds one
    /// descriptor per agent, as does each node).
    #[arg(long, default_value_t = 19_000)]
    agents_per_node: u32,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 60)]
    measure_s: u64,
    /// Heartbeat period the nodes ask of agents (`link.heartbeat_interval`;
    /// the timeout is three times it); default: the shipped one.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// TLS handshakes in flight at once, per child process.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Give up when the agents are not all registered and listed by then.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    ready_within: Duration,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the temp dirs (configs, logs, Redis' files) and print them.
    #[arg(long)]
    keep_dir: bool,
}

impl ScaleArgs {
    fn agents(&self) -> u32 {
        self.nodes * self.agents_per_node
    }

    fn heartbeat_interval(&self) -> Duration {
        match self.heartbeat_interval_ms {
            Some(ms) => Duration::from_millis(ms),
            None => LinkConfig::default().heartbeat_interval,
        }
    }
}

/// Runs the bench; see the module header.
pub async fn run(args: ScaleArgs) -> Result<BenchOutput> {
    if args.nodes == 0 || args.agents_per_node == 0 {
        bail!("--nodes and --agents-per-node must be at least 1");
    }
    if args.nodes.checked_mul(args.agents_per_node).is_none() {
        bail!("--nodes x --agents-per-node is too large");
    }
    if args.heartbeat_interval() < Duration::from_millis(100) {
        bail!("--heartbeat-interval-ms must be at least 100 (link.heartbeat_interval)");
    }
    let fd_limit = raise_fd_limit()?;
    // Each node and each child holds one descriptor per agent of its own.
    check_fd_limit_of("--agents-per-node", args.agents_per_node, fd_limit)?;
    let app = AppConfig::with_secret(APP_CODE, format!("{:032x}", rand::random::<u128>()));
    let template = ServerOptions {
        bin: args.server_bin.clone(),
        heartbeat_interval: args.heartbeat_interval(),
        apps: vec![app.clone()],
        ..ServerOptions::default()
    };
    let cluster = BenchCluster::start(args.nodes, &template).await?;
    let mut sims = Vec::new();
    let result = drive(&args, &cluster, &app, &mut sims).await;
    for sim in sims {
        sim.stop().await;
    }
    let failed = !matches!(&result, Ok((_, None)));
    cluster.stop(args.keep_dir || failed).await;
    let (report, failure) = result?;
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

/// Starts the children, waits until every node holds its agents, warms
/// up and measures. The children are left in `sims` for the caller to
/// stop, whatever happens.
async fn drive(
    args: &ScaleArgs,
    cluster: &BenchCluster,
    app: &AppConfig,
    sims: &mut Vec<SimProcess>,
) -> Result<(Report, Option<String>)> {
    let api = ApiClient::new(cluster.nodes[0].api, app)?;
    wait_members(&api, args.nodes).await?;
    let began = Instant::now();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let first = i as u32 * args.agents_per_node;
        sims.push(SimProcess::spawn(
            node.link,
            first..first + args.agents_per_node,
            &node.agent_tls,
            args.concurrency,
        )?);
    }
    let deadline = began + args.ready_within;
    wait_connected(args, sims, deadline).await?;
    let listed = wait_listed(args, &api, sims, deadline).await?;
    let ready_s = began.elapsed().as_secs_f64();
    eprintln!(
        "{} agents registered and listed after {ready_s:.1}s",
        args.agents()
    );
    let ready_rss_kib = cluster
        .nodes
        .iter()
        .map(|n| rss_kib(&n.proc_id()))
        .collect::<Result<Vec<_>>>()?;
    let interval = args.heartbeat_interval();
    eprintln!("warming up for one heartbeat interval ({interval:?})");
    sleep(interval).await;
    let measured = window::measure(
        cluster,
        app,
        sims,
        Duration::from_secs(args.measure_s.max(1)),
    )
    .await?;
    let report = Report::new(args, ready_s, &listed, &ready_rss_kib, &measured);
    let failure = report.failure();
    Ok((report, failure))
}

/// Waits until every child has registered or failed each of its agents;
/// an error if any agent failed or a child exited.
async fn wait_connected(
    args: &ScaleArgs,
    sims: &mut [SimProcess],
    deadline: Instant,
) -> Result<()> {
    let mut last_print = Instant::now();
    loop {
        for sim in sims.iter_mut() {
            sim.check_running()?;
        }
        let all: Vec<Counters> = sims.iter().filter_map(SimProcess::counters).collect();
        let sum = Counters::sum(&all);
        let done = all.len() == sims.len() && sum.connecting_done;
        if done || last_print.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "connecting: {}/{} registered, {} failed",
                sum.registered,
                args.agents(),
                sum.failed
            );
            last_print = Instant::now();
        }
        if done && sum.failed > 0 {
            bail!(
                "{} of {} simulated agents failed to register; first error: {}",
                sum.failed,
                args.agents(),
                sum.first_error.as_deref().unwrap_or("none reported")
            );
        }
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "only {} of {} agents registered (and {} failed) within {:?}",
                sum.registered,
                args.agents(),
                sum.failed,
                args.ready_within
            );
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until node 1's `list_nodes` shows every node holding its
/// agents (each node's registry entry carries its load); returns what it
/// listed.
async fn wait_listed(
    args: &ScaleArgs,
    api: &ApiClient,
    sims: &mut [SimProcess],
    deadline: Instant,
) -> Result<Vec<NodeLoad>> {
    let want = u64::from(args.agents_per_node);
    let mut last_print = Instant::now();
    loop {
        for sim in sims.iter_mut() {
            sim.check_running()?;
        }
        let nodes = api.nodes().await?;
        let counts: Vec<u64> = nodes.iter().map(|n| n.agents).collect();
        let all = nodes.len() == args.nodes as usize && counts.iter().all(|&c| c == want);
        if all {
            return Ok(nodes);
        }
        if Instant::now() >= deadline {
            bail!(
                "list_nodes shows {counts:?} agents per node after {:?}, expected {want} on each of {} nodes",
                args.ready_within,
                args.nodes
            );
        }
        if last_print.elapsed() >= PROGRESS_EVERY {
            eprintln!("listed: {counts:?} agents per node");
            last_print = Instant::now();
        }
        sleep(Duration::from_millis(500)).await;
    }
}

//! `gse-bench fanout`: a trivial command on many agents through the real
//! server's task API, every result back (issue "real-time task execution";
//! DESIGN.md target: 10,000 agents, p50 under 1 s, p99 under 2 s, 2 cores).
//!
//! Start at [`run`]: start the real server with an API app and
//! `api.max_hosts_per_call` >= the agents -> bring up the agents, either K
//! simulated ones in this process ([`crate::sim`]: real TLS links, the
//! Executor seam's simulation runner) or N real `gse-agent` processes
//! ([`crate::local_agents`]) -> wait until the API reports them all alive -> `--rounds`
//! rounds ([`round`]) of `async_execute_script` + polling
//! `get_execute_script_result` ([`crate::api`]) -> one [`Report`].

mod metrics;
mod nodes;
mod proxied;
mod report;
mod round;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use gse_core::seams::Executor;
use gse_server::role::api::AppConfig;
use tokio::time::{Instant, sleep};

use crate::BenchOutput;
use crate::api::ApiClient;
use crate::local_agents::{self, RealAgents};
use crate::procfs::{CpuMark, check_fd_limit, raise_fd_limit, rss_kib};
use crate::server::{BenchServer, ServerOptions};
use crate::sim::{Fleet, SimulatedExecutor, identity_ip};
use metrics::ServerMetrics;
use report::{Report, RunFigures};
use round::{RoundFigures, RoundPlan};

/// The trivial command, and what it prints.
const COMMAND: &str = "echo hello";
const EXPECTED_SCREEN: &str = "hello\n";
/// `timeout_seconds` of the command.
const COMMAND_TIMEOUT_S: u32 = 60;
/// Quiet time between rounds (the server's writer flushes every 150 ms).
const ROUND_PAUSE: Duration = Duration::from_secs(1);
/// App the bench registers in `api.apps`.
const APP_CODE: &str = "gse-bench";

/// Flags of `gse-bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Number of simulated agents (ignored with --real-agents).
    #[arg(long, default_value_t = 10_000)]
    agents: u32,
    /// Run N real gse-agent processes (beside gse-bench) running real
    /// commands, instead of simulated agents.
    #[arg(long, value_name = "N")]
    real_agents: Option<u32>,
    /// Rounds of start + poll-until-done, each its own task.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Time between the starts of two polls of get_execute_script_result;
    /// a poll that takes longer is followed by the next at once.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// A round whose entries are not all final after this long fails.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    round_timeout: Duration,
    /// TLS handshakes in flight at once while simulated agents connect.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the temp dir (certs, configs, logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Server nodes. With N > 1: ZooKeeper, Redis and N gse-server
    /// processes in one cluster, simulated agent i connected to node
    /// i % N, the task asked of (and polled on) node 1; then the same run
    /// on one embedded node as the reference ([`nodes`]).
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// With --nodes > 1: skip the one-node reference run.
    #[arg(long)]
    no_reference: bool,
    /// Cluster mode (ZooKeeper + Redis) even with --nodes 1: tells what
    /// the shared store costs apart from forwarding between nodes.
    #[arg(long)]
    cluster: bool,
    /// The simulated agents are of a cloud area behind one gse-proxy
    /// (issue 12); then the same run with the agents connected directly as
    /// the reference ([`proxied`]).
    #[arg(long)]
    proxy: bool,
    /// With --proxy: let the proxy share every core with the server and
    /// the bench. By default (2 cores or more) the proxy gets the last core
    /// to itself and the server and the bench the others, in both runs, as
    /// a proxy runs on a host of its own.
    #[arg(long)]
    share_cores: bool,
}

/// The agents of a run.
enum Agents {
    Simulated(Arc<Fleet>),
    Real(RealAgents),
}

impl Agents {
    fn mode(&self) -> &'static str {
        match self {
            Agents::Simulated(_) => "simulated",
            Agents::Real(_) => "real",
        }
    }

    /// The `kind()` of the Executor that runs the commands.
    fn executor(&self) -> &'static str {
        match self {
            Agents::Simulated(_) => SimulatedExecutor.kind(),
            // gse-agent's ProcessExecutor.
            Agents::Real(_) => "process",
        }
    }

    /// Real agents' RSS, all processes together, KiB.
    fn rss_kib(&self) -> Option<u64> {
        match self {
            Agents::Simulated(_) => None,
            Agents::Real(real) => Some(real.rss_kib_total()),
        }
    }

    async fn stop(&mut self) {
        match self {
            Agents::Simulated(fleet) => fleet.shutdown.cancel(),
            Agents::Real(real) => real.stop().await,
        }
    }
}

/// Runs the bench; see the module header for the steps.
pub async fn run(args: FanoutArgs) -> Result<BenchOutput> {
    let fd_limit = raise_fd_limit()?;
    match args.real_agents {
        Some(n) => local_agents::check_count(n)?,
        None => check_fd_limit(args.agents, fd_limit)?,
    }
    if args.proxy {
        return proxied::run(&args).await;
    }
    if args.nodes > 1 || args.cluster {
        return nodes::run(&args).await;
    }
    let (report, failure) = single_node(&args).await?;
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

/// The bench's API app, with a fresh secret.
fn bench_app() -> AppConfig {
    AppConfig::with_secret(APP_CODE, format!("{:032x}", rand::random::<u128>()))
}

/// Every server of the bench: its binary, the bench's app, and
/// `api.max_hosts_per_call` so that one call names every agent.
fn server_options(args: &FanoutArgs, app: &AppConfig) -> ServerOptions {
    ServerOptions {
        bin: args.server_bin.clone(),
        max_hosts_per_call: Some(max_hosts(args)),
        apps: vec![app.clone()],
        ..ServerOptions::default()
    }
}

/// `api.max_hosts_per_call` of every server: one call names every agent.
fn max_hosts(args: &FanoutArgs) -> usize {
    (args.real_agents.unwrap_or(args.agents) as usize).max(5000)
}

/// The whole run on one embedded node (the default, and the reference of
/// `--nodes N`).
async fn single_node(args: &FanoutArgs) -> Result<(Report, Option<String>)> {
    let app = bench_app();
    let server = BenchServer::start(&server_options(args, &app)).await?;
    let links = [server.link];
    let result = drive(args, &server, &app, &links, None).await;
    server.close(result, args.keep_dir).await
}

/// Agents of a cloud area behind a proxy: the area, and the proxy's pid.
pub(super) struct Behind {
    pub area: i64,
    pub pid: String,
}

/// Brings the agents up (simulated ones spread over `links`), runs the
/// rounds through `server`'s API, stops the agents.
async fn drive(
    args: &FanoutArgs,
    server: &BenchServer,
    app: &AppConfig,
    links: &[SocketAddr],
    behind: Option<&Behind>,
) -> Result<(Report, Option<String>)> {
    let pid = server.proc_id();
    let server_idle_rss_kib = rss_kib(&pid)?;
    let proxy_idle_rss_kib = behind.map(|b| rss_kib(&b.pid)).transpose()?;
    let api = ApiClient::new(server.api, app)?;
    let began = Instant::now();
    let area = behind.map_or(0, |b| b.area);
    let (mut agents, targets) = start_agents(args, server, &api, (links, area)).await?;
    let ready_s = began.elapsed().as_secs_f64();
    eprintln!("{} agents alive after {ready_s:.1}s", targets.len());
    let server_ready_rss_kib = rss_kib(&pid)?;
    let proxy_ready_rss_kib = behind.map(|b| rss_kib(&b.pid)).transpose()?;
    let plan = RoundPlan {
        command: COMMAND.into(),
        expected_screen: EXPECTED_SCREEN.into(),
        timeout_s: COMMAND_TIMEOUT_S,
        poll_every: args.poll_interval,
        give_up_after: args.round_timeout,
        server_pid: pid.clone(),
        proxy_pid: behind.map(|b| b.pid.clone()),
        node_of: if links.len() > 1 {
            // Simulated agent i is held by node i % N (`Fleet::spread`).
            plan_targets_by_node(&targets, links.len())
        } else {
            HashMap::new()
        },
        nodes: links.len(),
        targets,
    };
    let measured = rounds_apart(server.api, app, plan.clone(), args.rounds).await;
    let server_metrics = scrape_metrics(&api).await;
    let agents_rss_kib = agents.rss_kib();
    agents.stop().await;
    let (rounds, cpu) = measured?;
    let run = RunFigures {
        mode: agents.mode(),
        nodes: links.len() as u32,
        executor: agents.executor(),
        agents: plan.targets.len() as u32,
        command: COMMAND.into(),
        poll_interval_ms: args.poll_interval.as_secs_f64() * 1000.0,
        ready_s,
        server_idle_rss_kib,
        server_ready_rss_kib,
        server_after_rss_kib: rss_kib(&pid)?,
        server_cpu_percent: cpu.server,
        bench_cpu_percent: cpu.bench,
        agents_rss_kib,
        server_metrics,
        proxy: match (behind, proxy_idle_rss_kib, proxy_ready_rss_kib) {
            (Some(b), Some(idle), Some(ready)) => Some(report::ProxyFigures::new(
                (idle, ready, rss_kib(&b.pid)?),
                cpu.proxy.unwrap_or(0.0),
            )),
            _ => None,
        },
    };
    let report = Report::new(run, &rounds);
    let failure = report.failure();
    Ok((report, failure))
}

/// Starts the agents and waits until all are alive; returns them and their
/// `cloud_id:ip` names.
async fn start_agents(
    args: &FanoutArgs,
    server: &BenchServer,
    api: &ApiClient,
    (links, area): (&[SocketAddr], i64),
) -> Result<(Agents, Vec<String>)> {
    if let Some(n) = args.real_agents {
        let mut real = RealAgents::spawn(n, server.dir(), server.link, &server.agent_tls)?;
        let targets = real.targets();
        real.wait_alive(api).await?;
        return Ok((Agents::Real(real), targets));
    }
    let fleet = Fleet::in_area(&server.agent_tls, links.to_vec(), args.concurrency, area)?;
    fleet.spawn_all(args.agents);
    fleet.wait_connected(args.agents).await;
    if let Some(e) = fleet.first_error() {
        fleet.shutdown.cancel();
        bail!("simulated agents failed to connect; first error: {e}");
    }
    let ips: Vec<String> = (0..args.agents).map(identity_ip).collect();
    api.wait_alive_in(area, &ips, || Ok(())).await?;
    let targets = ips.iter().map(|ip| format!("{area}:{ip}")).collect();
    Ok((Agents::Simulated(fleet), targets))
}

/// Simulated agent i (target i) is held by node i % `nodes`.
fn plan_targets_by_node(targets: &[String], nodes: usize) -> HashMap<String, usize> {
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i % nodes))
        .collect()
}

/// The server's histograms; a failed scrape only loses them.
async fn scrape_metrics(api: &ApiClient) -> ServerMetrics {
    match api.metrics_text().await {
        Ok(text) => ServerMetrics::parse(&text),
        Err(e) => {
            eprintln!("cannot read the server's metrics: {e:#}");
            ServerMetrics::default()
        }
    }
}

/// Runs the rounds from a thread and runtime of their own, as a job
/// platform polls from its own process: on the bench's runtime the API
/// client's wake-ups queued behind those of thousands of simulated agents
/// answering the same task, which timed the bench's scheduler, not the
/// server (a 50 ms poll took 230 ms to come back when the server answered
/// it in 50).
async fn rounds_apart(
    api: SocketAddr,
    app: &AppConfig,
    plan: RoundPlan,
    rounds: usize,
) -> Result<(Vec<RoundFigures>, RoundsCpu)> {
    let app = app.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-api".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build the API client's runtime")
                .and_then(|rt| {
                    rt.block_on(async {
                        let api = ApiClient::new(api, &app)?;
                        run_rounds(&api, &plan, rounds).await
                    })
                });
            let _ = tx.send(result);
        })
        .context("cannot start the API client's thread")?;
    rx.await
        .context("the API client's thread ended without an answer")?
}

/// CPU of the processes while rounds ran (pauses left out), % of one core.
struct RoundsCpu {
    server: f64,
    bench: f64,
    proxy: Option<f64>,
}

/// Runs the rounds with a pause between them, printing each in brief.
async fn run_rounds(
    api: &ApiClient,
    plan: &RoundPlan,
    rounds: usize,
) -> Result<(Vec<RoundFigures>, RoundsCpu)> {
    let mut all = Vec::with_capacity(rounds);
    let (mut wall, mut server_cpu, mut bench_cpu, mut proxy_cpu) = (0.0, 0.0, 0.0, 0.0);
    for i in 1..=rounds {
        let server = CpuMark::now(&plan.server_pid)?;
        let bench = CpuMark::now("self")?;
        let proxy = plan.proxy_pid.as_deref().map(CpuMark::now).transpose()?;
        let began = Instant::now();
        let figures = round::run(api, plan).await?;
        let seconds = began.elapsed().as_secs_f64();
        wall += seconds;
        server_cpu += server.percent_since()? * seconds;
        bench_cpu += bench.percent_since()? * seconds;
        if let Some(proxy) = proxy {
            proxy_cpu += proxy.percent_since()? * seconds;
        }
        let seen = report::Stats::of(&figures.seen_ms);
        eprintln!(
            "round {i}/{rounds}: seen p50 {} ms, p99 {} ms, last {:.0} ms, {} polls, {} failed",
            seen.p50,
            seen.p99,
            figures.last_ms,
            figures.poll_ms.len(),
            figures.failed
        );
        all.push(figures);
        if i < rounds {
            sleep(ROUND_PAUSE).await;
        }
    }
    let wall = f64::max(wall, 1e-9);
    let cpu = RoundsCpu {
        server: server_cpu / wall,
        bench: bench_cpu / wall,
        proxy: plan.proxy_pid.as_ref().map(|_| proxy_cpu / wall),
    };
    Ok((all, cpu))
}

//! `gse-bench failover` (issue 11, "Failover"): kill a node holding K
//! simulated agents (default 19,000) and time until they are all
//! registered with the other nodes, and until the API of a survivor
//! reports them all alive again.
//!
//! Start at [`run`]: ZooKeeper + Redis ([`crate::cluster`]) -> N nodes
//! (default 2) -> K agents, every one on node 1 first, each knowing every
//! node ([`crate::sim::failover`]) -> node 2's API reports all K alive ->
//! SIGKILL node 1 -> wait until every agent re-registered, then until node
//! 2 reports them all alive -> one [`Report`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use gse_server::role::api::AppConfig;
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::BenchOutput;
use crate::api::ApiClient;
use crate::cluster::{BenchCluster, wait_members};
use crate::procfs::{check_fd_limit, raise_fd_limit};
use crate::server::{BenchServer, ServerOptions};
use crate::sim::failover::{self as agents, Moves};
use crate::sim::{Fleet, identity_ip};

/// The figure.
const TARGET: &str = "every agent of the killed node registered elsewhere within 30 s, 0 handshake failures beyond retries";
const TARGET_S: f64 = 30.0;
/// With --agents-stay-down: status right again within the same time.
const STAY_DOWN_TARGET: &str =
    "agents of the killed node that do not come back reported not alive within 30 s";
const APP_CODE: &str = "gse-bench";

/// Flags of `gse-bench failover`.
#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// Simulated agents, all on the node that is killed.
    #[arg(long, default_value_t = 19_000)]
    agents: u32,
    /// Nodes of the cluster (at least 2): node 1 is killed.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// TLS handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// After the kill, give up waiting after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    give_up_after: Duration,
    /// The agents do not come back after the kill: time instead until
    /// the survivor's API reports them all not alive.
    #[arg(long)]
    agents_stay_down: bool,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Keep the temp dirs and print their paths.
    #[arg(long)]
    keep_dir: bool,
}

/// The JSON line.
#[derive(Serialize, Debug)]
struct Report {
    bench: &'static str,
    agents: u32,
    nodes: u32,
    /// From the first connect until node 2 reported every agent alive.
    ready_s: f64,
    agents_stay_down: bool,
    /// Agents node 2 reported alive just after the SIGKILL, before any
    /// had moved (the status a caller saw then).
    alive_reported_at_kill: usize,
    /// SIGKILL -> the last agent registered with another node.
    registered_elsewhere_s: Option<f64>,
    /// SIGKILL -> node 2's API reports every agent alive again.
    alive_again_s: Option<f64>,
    /// With --agents-stay-down: SIGKILL -> node 2 reports none alive.
    #[serde(skip_serializing_if = "Option::is_none")]
    all_offline_s: Option<f64>,
    reregistered: u64,
    links_lost: u64,
    /// Attempts that failed and were retried (or not).
    failed_attempts: u64,
    /// Agents that failed every attempt in a row.
    handshake_failures_beyond_retries: u64,
    retries_per_agent: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    cores: usize,
    target: &'static str,
    meets_target: bool,
}

/// Runs the bench; see the module header.
pub async fn run(args: FailoverArgs) -> Result<BenchOutput> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2: one is killed, the agents move to the others");
    }
    let fd_limit = raise_fd_limit()?;
    check_fd_limit(args.agents, fd_limit)?;
    let app = AppConfig::with_secret(APP_CODE, format!("{:032x}", rand::random::<u128>()));
    let template = ServerOptions {
        bin: args.server_bin.clone(),
        max_hosts_per_call: Some((args.agents as usize).max(5000)),
        apps: vec![app.clone()],
        ..ServerOptions::default()
    };
    let mut cluster = BenchCluster::start(args.nodes, &template).await?;
    let result = drive(&args, &mut cluster.nodes, &app).await;
    let failed = !matches!(&result, Ok((_, None)));
    cluster.stop(args.keep_dir || failed).await;
    let (report, failure) = result?;
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

async fn drive(
    args: &FailoverArgs,
    nodes: &mut [BenchServer],
    app: &AppConfig,
) -> Result<(Report, Option<String>)> {
    let survivor = ApiClient::new(nodes[1].api, app)?;
    wait_members(&survivor, args.nodes).await?;
    let links: Vec<_> = nodes.iter().map(|n| n.link).collect();
    let fleet = Fleet::spread(&nodes[0].agent_tls, links.clone(), args.concurrency)?;
    let moves = Arc::new(Moves::default());
    let began = Instant::now();
    for i in 0..args.agents {
        tokio::spawn(agents::run(fleet.clone(), moves.clone(), links.clone(), i));
    }
    fleet.wait_connected(args.agents).await;
    if let Some(e) = fleet.first_error() {
        fleet.shutdown.cancel();
        bail!("simulated agents failed to connect; first error: {e}");
    }
    let ips: Vec<String> = (0..args.agents).map(identity_ip).collect();
    survivor.wait_alive(&ips, || Ok(())).await?;
    let ready_s = began.elapsed().as_secs_f64();
    eprintln!(
        "{} agents on node-1, alive through node-2, after {ready_s:.1}s; SIGKILL node-1",
        args.agents
    );

    if args.agents_stay_down {
        moves.stay_down.store(true, Ordering::Relaxed);
    }
    let killed_at = fleet.started.elapsed();
    let kill = Instant::now();
    nodes[0].kill().await?;
    // What the survivor says the moment the holder died (its agents are
    // all between nodes then): a directory that still shows the dead
    // node's claims answers "alive" here.
    let alive_at_kill = survivor.alive(&ips).await?;
    if args.agents_stay_down {
        let offline = wait_offline(&survivor, &ips, args.give_up_after).await?;
        let all_offline_s = offline.then(|| kill.elapsed().as_secs_f64());
        fleet.shutdown.cancel();
        return Ok(stay_down_report(
            args,
            ready_s,
            alive_at_kill,
            all_offline_s,
        ));
    }
    let registered_elsewhere_s = wait_moved(&fleet, &moves, args)
        .await
        .map(|us| (Duration::from_micros(us).saturating_sub(killed_at)).as_secs_f64());
    let alive_again_s = match registered_elsewhere_s {
        Some(_) => wait_all_alive(
            &survivor,
            &ips,
            args.give_up_after.saturating_sub(kill.elapsed()),
        )
        .await?
        .then(|| kill.elapsed().as_secs_f64()),
        None => None,
    };
    fleet.shutdown.cancel();
    let gave_up = moves.gave_up.load(Ordering::Relaxed);
    let report = Report {
        bench: "failover",
        agents: args.agents,
        nodes: args.nodes,
        agents_stay_down: false,
        ready_s: r2(ready_s),
        alive_reported_at_kill: alive_at_kill,
        all_offline_s: None,
        registered_elsewhere_s: registered_elsewhere_s.map(r2),
        alive_again_s: alive_again_s.map(r2),
        reregistered: moves.reregistered.load(Ordering::Relaxed),
        links_lost: moves.links_lost.load(Ordering::Relaxed),
        failed_attempts: moves.failed_attempts.load(Ordering::Relaxed),
        handshake_failures_beyond_retries: gave_up,
        retries_per_agent: agents::ATTEMPTS,
        first_error: fleet.first_error(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        target: TARGET,
        meets_target: gave_up == 0 && registered_elsewhere_s.is_some_and(|s| s < TARGET_S),
    };
    let failure = match (registered_elsewhere_s, alive_again_s) {
        (None, _) => Some(format!(
            "only {} of {} agents registered elsewhere within {:?} of the kill ({gave_up} gave up)",
            report.reregistered, args.agents, args.give_up_after
        )),
        (Some(_), None) => Some(format!(
            "node-2 did not report all {} agents alive within {:?} of the kill",
            args.agents, args.give_up_after
        )),
        _ => None,
    };
    Ok((report, failure))
}

/// The line of an `--agents-stay-down` run: no agent moves; the figure
/// is how long the survivor keeps calling the dead node's agents alive.
fn stay_down_report(
    args: &FailoverArgs,
    ready_s: f64,
    alive_at_kill: usize,
    all_offline_s: Option<f64>,
) -> (Report, Option<String>) {
    let report = Report {
        bench: "failover",
        agents: args.agents,
        nodes: args.nodes,
        agents_stay_down: true,
        ready_s: r2(ready_s),
        alive_reported_at_kill: alive_at_kill,
        registered_elsewhere_s: None,
        alive_again_s: None,
        all_offline_s: all_offline_s.map(r2),
        reregistered: 0,
        links_lost: u64::from(args.agents),
        failed_attempts: 0,
        handshake_failures_beyond_retries: 0,
        retries_per_agent: agents::ATTEMPTS,
        first_error: None,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        target: STAY_DOWN_TARGET,
        meets_target: all_offline_s.is_some_and(|s| s < TARGET_S),
    };
    let failure = all_offline_s.is_none().then(|| {
        format!(
            "node-2 still reports agents of the killed node alive {:?} after the kill",
            args.give_up_after
        )
    });
    (report, failure)
}

/// Whether `api` reports none of `ips` alive within `within`.
async fn wait_offline(api: &ApiClient, ips: &[String], within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    let mut last_print = Instant::now();
    loop {
        let alive = api.alive(ips).await?;
        if alive == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            eprintln!("node-2 reports {alive}/{} alive at the deadline", ips.len());
            return Ok(false);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("node-2 reports {alive}/{} alive", ips.len());
            last_print = Instant::now();
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every agent registered again (or gave up, or time ran
/// out); returns when the last one did, µs since the fleet's start, if
/// they all did.
async fn wait_moved(fleet: &Fleet, moves: &Moves, args: &FailoverArgs) -> Option<u64> {
    let deadline = Instant::now() + args.give_up_after;
    let mut last_print = Instant::now();
    loop {
        let moved = moves.reregistered.load(Ordering::Relaxed);
        let gave_up = moves.gave_up.load(Ordering::Relaxed);
        if moved >= u64::from(args.agents) {
            return Some(moves.last_reregistered_us.load(Ordering::Relaxed));
        }
        if moved + gave_up >= u64::from(args.agents) || Instant::now() >= deadline {
            return None;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "moving: {moved}/{} registered elsewhere, {gave_up} gave up, {} failed attempts, {:.1}s",
                args.agents,
                moves.failed_attempts.load(Ordering::Relaxed),
                fleet.started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `api` reports every one of `ips` alive within `within`.
async fn wait_all_alive(api: &ApiClient, ips: &[String], within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        let alive = api.alive(ips).await?;
        if alive == ips.len() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            eprintln!("node-2 reports {alive}/{} alive at the deadline", ips.len());
            return Ok(false);
        }
        sleep(Duration::from_millis(100)).await;
    }
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

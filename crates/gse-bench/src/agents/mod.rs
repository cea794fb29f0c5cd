//! `gse-bench agents`: K simulated agents held by one real gse-server
//! (DESIGN.md target: 50,000 agents per node, heartbeating, under 1 GiB RSS).
//!
//! Start at [`run`]: check the open-files limit -> start the server
//! ([`crate::server`]) -> connect K agents with bounded concurrency
//! ([`crate::sim`]) -> warm up one heartbeat interval -> measure a steady
//! window (acked heartbeats/s, server CPU) -> read RSS -> stop. The figures
//! are one [`Report`]. What one simulated agent does lives in [`crate::sim`].

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tokio::time::{Instant, sleep};

use crate::BenchOutput;
use crate::procfs::{CpuMark, check_fd_limit, raise_fd_limit, rss_kib};
use crate::server::{BenchServer, ServerOptions};
use crate::sim::Fleet;
use report::Report;

/// Flags of `gse-bench agents`.
#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// Number of simulated agents (each one TCP + TLS connection and identity).
    #[arg(long, default_value_t = 1000)]
    agents: u32,
    /// Heartbeat period the server asks for (link.heartbeat_interval); the
    /// server's heartbeat timeout is three times it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Steady window over which heartbeats/s and server CPU are measured;
    /// default: three heartbeat intervals.
    #[arg(long, value_parser = humantime::parse_duration)]
    measure: Option<Duration>,
    /// TLS handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the temp dir (certs, server.toml, server.log) and print its path.
    #[arg(long)]
    keep_dir: bool,
}

/// Runs the bench; see the module header for the steps.
pub async fn run(args: AgentsArgs) -> Result<BenchOutput> {
    let fd_limit = raise_fd_limit()?;
    check_fd_limit(args.agents, fd_limit)?;
    let server = BenchServer::start(&ServerOptions {
        bin: args.server_bin.clone(),
        heartbeat_interval: args.heartbeat_interval,
        ..ServerOptions::default()
    })
    .await?;
    let result = drive(&args, &server, fd_limit).await;
    server.finish(result, args.keep_dir).await
}

/// Connects the fleet, measures, and shuts the fleet down; returns the
/// report and, if the run was not clean, why.
async fn drive(
    args: &AgentsArgs,
    server: &BenchServer,
    fd_limit: u64,
) -> Result<(Report, Option<String>)> {
    let pid = server.proc_id();
    let idle_rss_kib = rss_kib(&pid)?;
    let fleet = Fleet::new(&server.agent_tls, server.link, args.concurrency)?;
    let connect = connect_all(&fleet, &pid, args.agents).await?;
    let interval = args.heartbeat_interval;
    eprintln!("warming up for one heartbeat interval ({interval:?})");
    sleep(interval).await;
    let window = measure(&fleet, &pid, args.measure.unwrap_or(interval * 3)).await?;
    fleet.shutdown.cancel();
    let report = Report::new(args, &fleet, &connect, &window, idle_rss_kib, fd_limit);
    let failure = report.failure();
    Ok((report, failure))
}

/// CPU use of both processes while the fleet connected.
struct ConnectFigures {
    server_cpu_percent: f64,
    bench_cpu_percent: f64,
}

/// Spawns one task per agent and waits until each registered or failed.
async fn connect_all(fleet: &Arc<Fleet>, pid: &str, agents: u32) -> Result<ConnectFigures> {
    let server_cpu = CpuMark::now(pid)?;
    let bench_cpu = CpuMark::now("self")?;
    fleet.spawn_all(agents);
    fleet.wait_connected(agents).await;
    Ok(ConnectFigures {
        server_cpu_percent: server_cpu.percent_since()?,
        bench_cpu_percent: bench_cpu.percent_since()?,
    })
}

/// Figures of the steady window.
struct Window {
    seconds: f64,
    acked_per_s: f64,
    sent_per_s: f64,
    server_cpu_percent: f64,
    bench_cpu_percent: f64,
    server_rss_kib: u64,
    bench_rss_kib: u64,
}

/// Counts acked heartbeats and server CPU over `length`, then reads RSS.
async fn measure(fleet: &Fleet, pid: &str, length: Duration) -> Result<Window> {
    eprintln!("measuring for {length:?}");
    let acked = fleet.heartbeats_acked.load(Ordering::Relaxed);
    let sent = fleet.heartbeats_sent.load(Ordering::Relaxed);
    let server_cpu = CpuMark::now(pid)?;
    let bench_cpu = CpuMark::now("self")?;
    let began = Instant::now();
    sleep(length).await;
    let seconds = began.elapsed().as_secs_f64();
    let rate = |now: u64, then: u64| (now - then) as f64 / seconds;
    Ok(Window {
        seconds,
        acked_per_s: rate(fleet.heartbeats_acked.load(Ordering::Relaxed), acked),
        sent_per_s: rate(fleet.heartbeats_sent.load(Ordering::Relaxed), sent),
        server_cpu_percent: server_cpu.percent_since()?,
        bench_cpu_percent: bench_cpu.percent_since()?,
        server_rss_kib: rss_kib(pid)?,
        bench_rss_kib: rss_kib("self")?,
    })
}

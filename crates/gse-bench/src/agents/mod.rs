//! `gse-bench agents`: K simulated agents held by one real gse-server
//! (DESIGN.md target: 50,000 agents per node, heartbeating, under 1 GiB RSS).
//!
//! Start at [`run`]: check the open-files limit -> start the server
//! ([`crate::server`]) -> connect K agents with bounded concurrency
//! ([`sim`]) -> warm up one heartbeat interval -> measure a steady window
//! (acked heartbeats/s, server CPU) -> read RSS -> stop. The figures are one
//! [`Report`]. What one simulated agent does lives in [`sim`].

mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::BenchOutput;
use crate::procfs::{CpuMark, raise_fd_limit, rss_kib};
use crate::server::{BenchServer, ServerOptions};
use sim::Fleet;

/// Descriptors each process keeps for itself beyond one per agent (listeners,
/// log files, SQLite, epoll, the runtime).
const FD_RESERVE: u64 = 100;
/// The DESIGN.md figure this bench is measured against.
const TARGET: &str = "50000 agents per node under 1 GiB RSS";
/// Agent count of the target, for the extrapolated RSS.
const TARGET_AGENTS: f64 = 50_000.0;

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

/// The JSON line of one run.
#[derive(Serialize, Debug)]
struct Report {
    bench: &'static str,
    agents: u32,
    connected: u64,
    failed: u64,
    /// Links the server ended after registration.
    lost: u64,
    connect_time_s: f64,
    connects_per_s: f64,
    connect_server_cpu_percent: f64,
    heartbeat_interval_s: f64,
    measure_s: f64,
    heartbeats_per_s: f64,
    expected_heartbeats_per_s: f64,
    heartbeats_sent_per_s: f64,
    server_rss_mib: f64,
    server_idle_rss_mib: f64,
    /// (RSS at the end - RSS before any agent) / connected agents.
    server_rss_kib_per_agent: f64,
    /// Idle RSS + 50,000 x the per-agent figure.
    server_rss_mib_at_50k: f64,
    server_cpu_percent: f64,
    bench_rss_mib: f64,
    fd_limit: u64,
    cores: usize,
    target: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// Runs the bench; see the module header for the steps.
pub async fn run(args: AgentsArgs) -> Result<BenchOutput> {
    let fd_limit = raise_fd_limit()?;
    check_fd_limit(args.agents, fd_limit)?;
    let mut server = BenchServer::start(&ServerOptions {
        bin: args.server_bin.clone(),
        heartbeat_interval: args.heartbeat_interval,
    })
    .await?;
    let result = drive(&args, &server, fd_limit).await;
    eprintln!("stopping gse-server");
    server.stop().await;
    let failed = !matches!(&result, Ok((_, None)));
    if args.keep_dir || failed {
        eprintln!("bench files kept in {}", server.keep_dir().display());
    }
    let (report, failure) = result?;
    Ok(BenchOutput {
        line: serde_json::to_value(report)?,
        failure,
    })
}

/// Both the server and this process hold one descriptor per agent.
fn check_fd_limit(agents: u32, fd_limit: u64) -> Result<()> {
    if u64::from(agents) + FD_RESERVE > fd_limit {
        bail!(
            "--agents {agents} needs about {} open files in gse-server and in gse-bench, \
             but the open-files hard limit (RLIMIT_NOFILE) is {fd_limit} and raising it needs \
             CAP_SYS_RESOURCE; use --agents {} or fewer, or raise the hard limit \
             (ulimit -Hn, limits.conf, systemd LimitNOFILE)",
            u64::from(agents) + FD_RESERVE,
            fd_limit.saturating_sub(FD_RESERVE)
        );
    }
    Ok(())
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
    let connect_cpu = CpuMark::now(&pid)?;
    for i in 0..args.agents {
        tokio::spawn(sim::run(fleet.clone(), i));
    }
    wait_connected(&fleet, args.agents).await;
    let connect_cpu_percent = connect_cpu.percent_since()?;
    let interval = args.heartbeat_interval;
    eprintln!("warming up for one heartbeat interval ({interval:?})");
    sleep(interval).await;
    let window = measure(&fleet, &pid, args.measure.unwrap_or(interval * 3)).await?;
    fleet.shutdown.cancel();

    let connected = fleet.registered.load(Ordering::Relaxed);
    let report = Report {
        bench: "agents",
        agents: args.agents,
        connected,
        failed: fleet.failed.load(Ordering::Relaxed),
        lost: fleet.lost.load(Ordering::Relaxed),
        connect_time_s: r2(fleet.connect_time().as_secs_f64()),
        connects_per_s: r2(connected as f64 / fleet.connect_time().as_secs_f64().max(1e-9)),
        connect_server_cpu_percent: r2(connect_cpu_percent),
        heartbeat_interval_s: r2(interval.as_secs_f64()),
        measure_s: r2(window.seconds),
        heartbeats_per_s: r2(window.acked_per_s),
        expected_heartbeats_per_s: r2(connected as f64 / interval.as_secs_f64()),
        heartbeats_sent_per_s: r2(window.sent_per_s),
        server_rss_mib: r2(window.server_rss_kib as f64 / 1024.0),
        server_idle_rss_mib: r2(idle_rss_kib as f64 / 1024.0),
        server_rss_kib_per_agent: r2(per_agent_kib(
            window.server_rss_kib,
            idle_rss_kib,
            connected,
        )),
        server_rss_mib_at_50k: r2((idle_rss_kib as f64
            + TARGET_AGENTS * per_agent_kib(window.server_rss_kib, idle_rss_kib, connected))
            / 1024.0),
        server_cpu_percent: r2(window.server_cpu_percent),
        bench_rss_mib: r2(window.bench_rss_kib as f64 / 1024.0),
        fd_limit,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        target: TARGET,
        first_error: fleet.first_error(),
    };
    let failure = (report.failed > 0 || report.lost > 0 || connected == 0).then(|| {
        format!(
            "{} agent(s) failed to connect and {} link(s) were lost; first error: {}",
            report.failed,
            report.lost,
            report.first_error.as_deref().unwrap_or("none")
        )
    });
    Ok((report, failure))
}

/// Waits until every agent registered or failed, printing progress.
async fn wait_connected(fleet: &Arc<Fleet>, agents: u32) {
    let mut last_print = Instant::now();
    loop {
        let registered = fleet.registered.load(Ordering::Relaxed);
        let failed = fleet.failed.load(Ordering::Relaxed);
        let done = registered + failed >= u64::from(agents);
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "connecting: {registered}/{agents} registered, {failed} failed, {:.1}s",
                fleet.started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if done {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Figures of the steady window.
struct Window {
    seconds: f64,
    acked_per_s: f64,
    sent_per_s: f64,
    server_cpu_percent: f64,
    server_rss_kib: u64,
    bench_rss_kib: u64,
}

/// Counts acked heartbeats and server CPU over `length`, then reads RSS.
async fn measure(fleet: &Fleet, pid: &str, length: Duration) -> Result<Window> {
    eprintln!("measuring for {length:?}");
    let acked = fleet.heartbeats_acked.load(Ordering::Relaxed);
    let sent = fleet.heartbeats_sent.load(Ordering::Relaxed);
    let cpu = CpuMark::now(pid)?;
    let began = Instant::now();
    sleep(length).await;
    let seconds = began.elapsed().as_secs_f64();
    let server_cpu_percent = cpu.percent_since()?;
    let rate = |now: u64, then: u64| (now - then) as f64 / seconds;
    Ok(Window {
        seconds,
        acked_per_s: rate(fleet.heartbeats_acked.load(Ordering::Relaxed), acked),
        sent_per_s: rate(fleet.heartbeats_sent.load(Ordering::Relaxed), sent),
        server_cpu_percent,
        server_rss_kib: rss_kib(pid)?,
        bench_rss_kib: rss_kib("self")?,
    })
}

fn per_agent_kib(rss_kib: u64, idle_kib: u64, agents: u64) -> f64 {
    rss_kib.saturating_sub(idle_kib) as f64 / agents.max(1) as f64
}

/// Rounds to two decimals for a readable JSON line.
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_limit_error_names_the_limit_and_the_largest_count() {
        check_fd_limit(19_000, 20_000).unwrap();
        let err = check_fd_limit(50_000, 20_000).unwrap_err().to_string();
        assert!(err.contains("hard limit (RLIMIT_NOFILE) is 20000"), "{err}");
        assert!(err.contains("--agents 19900 or fewer"), "{err}");
    }
}

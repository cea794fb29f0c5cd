//! The JSON line of `gse-bench agents`: what was measured, rounded for
//! reading, with the DESIGN.md target it is compared against.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{AgentsArgs, ConnectFigures, Window};
use crate::sim::Fleet;

/// The DESIGN.md figure this bench is measured against.
const TARGET: &str = "50000 agents per node under 1 GiB RSS";
/// Agent count of the target, for the extrapolated RSS.
const TARGET_AGENTS: f64 = 50_000.0;

/// One run's figures; field order is the order of the JSON line.
#[derive(Serialize, Debug)]
pub(super) struct Report {
    bench: &'static str,
    agents: u32,
    connected: u64,
    failed: u64,
    /// Links the server ended after registration.
    lost: u64,
    /// From the first connect to the last RegisterAck.
    connect_time_s: f64,
    connects_per_s: f64,
    connect_server_cpu_percent: f64,
    connect_bench_cpu_percent: f64,
    heartbeat_interval_s: f64,
    measure_s: f64,
    /// HeartbeatAcks received per second over the window.
    heartbeats_per_s: f64,
    expected_heartbeats_per_s: f64,
    heartbeats_sent_per_s: f64,
    /// Percent of one core over the window.
    server_cpu_percent: f64,
    bench_cpu_percent: f64,
    /// At the end of the window.
    server_rss_mib: f64,
    /// Before the first agent connected.
    server_idle_rss_mib: f64,
    /// (RSS at the end - idle RSS) / connected agents.
    server_rss_kib_per_agent: f64,
    /// Idle RSS + 50,000 x the per-agent figure.
    server_rss_mib_at_50k: f64,
    bench_rss_mib: f64,
    fd_limit: u64,
    cores: usize,
    target: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

impl Report {
    pub(super) fn new(
        args: &AgentsArgs,
        fleet: &Fleet,
        connect: &ConnectFigures,
        window: &Window,
        idle_rss_kib: u64,
        fd_limit: u64,
    ) -> Self {
        let connected = fleet.registered.load(Ordering::Relaxed);
        let connect_s = fleet.connect_time().as_secs_f64();
        let interval_s = args.heartbeat_interval.as_secs_f64();
        let per_agent_kib =
            window.server_rss_kib.saturating_sub(idle_rss_kib) as f64 / connected.max(1) as f64;
        Report {
            bench: "agents",
            agents: args.agents,
            connected,
            failed: fleet.failed.load(Ordering::Relaxed),
            lost: fleet.lost.load(Ordering::Relaxed),
            connect_time_s: r2(connect_s),
            connects_per_s: r2(connected as f64 / connect_s.max(1e-9)),
            connect_server_cpu_percent: r2(connect.server_cpu_percent),
            connect_bench_cpu_percent: r2(connect.bench_cpu_percent),
            heartbeat_interval_s: r2(interval_s),
            measure_s: r2(window.seconds),
            heartbeats_per_s: r2(window.acked_per_s),
            expected_heartbeats_per_s: r2(connected as f64 / interval_s),
            heartbeats_sent_per_s: r2(window.sent_per_s),
            server_cpu_percent: r2(window.server_cpu_percent),
            bench_cpu_percent: r2(window.bench_cpu_percent),
            server_rss_mib: mib(window.server_rss_kib as f64),
            server_idle_rss_mib: mib(idle_rss_kib as f64),
            server_rss_kib_per_agent: r2(per_agent_kib),
            server_rss_mib_at_50k: mib(idle_rss_kib as f64 + TARGET_AGENTS * per_agent_kib),
            bench_rss_mib: mib(window.bench_rss_kib as f64),
            fd_limit,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            target: TARGET,
            first_error: fleet.first_error(),
        }
    }

    /// Why the run was not clean, if it was not: an agent that could not
    /// connect or a link the server dropped is a finding, not noise.
    pub(super) fn failure(&self) -> Option<String> {
        (self.failed > 0 || self.lost > 0 || self.connected == 0).then(|| {
            format!(
                "{} agent(s) failed to connect and {} link(s) were lost; first error: {}",
                self.failed,
                self.lost,
                self.first_error.as_deref().unwrap_or("none")
            )
        })
    }
}

fn mib(kib: f64) -> f64 {
    r2(kib / 1024.0)
}

/// Rounds to two decimals for a readable JSON line.
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

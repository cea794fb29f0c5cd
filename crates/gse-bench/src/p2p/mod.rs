//! `gse-bench p2p`: one file of S bytes to N real agents whose uploads are
//! all capped at the same rate U (issue "P2P file distribution"; DESIGN.md
//! target: within 1.3x of the ideal S/U, far ahead of direct copy, N*S/U).
//!
//! Start at [`run`]: start the real server -> write the payload
//! ([`payload`]) -> per phase: spawn the source and N targets
//! ([`swarm`]), send the file through the file API ([`transfer`]), read the
//! agents' figures, stop them, check every target's copy, delete the copies
//! -> one [`Report`]. The **p2p** phase lets targets serve each other; the
//! **direct** phase is the same transfer with targets that serve no one
//! (`p2p_listen = ""`), so every byte comes from the source: plain copy
//! from one host to N, at the same cap U.

mod payload;
mod report;
mod size;
mod swarm;
mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use gse_server::role::api::AppConfig;

use crate::BenchOutput;
use crate::api::ApiClient;
use crate::local_agents;
use crate::procfs::{CpuMark, machine_cpu_ticks, raise_fd_limit};
use crate::server::{BenchServer, ServerOptions};
use payload::{Payload, remove_files};
use report::{PhaseFigures, PhaseReport, Report, RunParams};
use swarm::{Isolation, Layout, PhaseAgents, Swarm};
use transfer::TransferPlan;

/// App the bench registers in `api.apps`.
const APP_CODE: &str = "gse-bench";
/// Bytes in the agents' MB (`[file] upload_speed_mb`).
const AGENT_MB: u64 = 1024 * 1024;
/// Least time a phase's transfer is given.
const MIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Name of the payload file.
const PAYLOAD_NAME: &str = "payload.bin";

/// Flags of `gse-bench p2p`.
#[derive(Args, Debug)]
pub struct P2pArgs {
    /// Size of the file: 1GiB, 64MiB, 500MB, 4096 (K/M/G and KiB/MiB/GiB are
    /// powers of 1024, KB/MB/GB of 1000).
    #[arg(long, default_value = "1GiB", value_parser = size::parse)]
    size: u64,
    /// Number of target agents (the source is one more).
    #[arg(long, default_value_t = 20)]
    agents: u32,
    /// Upload cap U of every agent, MB/s of 1024*1024 bytes (the agents'
    /// `[file] upload_speed_mb`).
    #[arg(long, default_value_t = 50)]
    upload_mb: u64,
    /// Which phases to run: p2p, direct (the baseline), or both.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Time between two polls of get_transfer_file_result.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Give up on a phase's transfer after this long; default: 10 x S/U
    /// for p2p, 3 x N x S/U for direct (at least 2 minutes).
    #[arg(long, value_parser = humantime::parse_duration)]
    transfer_timeout: Option<Duration>,
    /// Let all targets write the one shared directory even when mount
    /// namespaces are available (then only that one file is checked).
    #[arg(long)]
    shared_dir: bool,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the temp dir (certs, configs, logs; never the payload copies).
    #[arg(long)]
    keep_dir: bool,
    /// The targets are agents of a cloud area behind a gse-proxy (issue
    /// 12): a `proxy` phase, with the bytes that crossed into the area,
    /// then the `p2p` phase (the same targets connected directly) as its
    /// reference; `--mode` is not used.
    #[arg(long)]
    proxy: bool,
}

/// Which phases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    P2p,
    Direct,
    Both,
}

/// One phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    P2p,
    Direct,
    /// P2P with the targets behind a proxy.
    Proxy,
}

/// Runs the bench; see the module header for the steps.
pub async fn run(args: P2pArgs) -> Result<BenchOutput> {
    local_agents::check_count(args.agents + 1)?;
    raise_fd_limit()?;
    let app = AppConfig::with_secret(APP_CODE, format!("{:032x}", rand::random::<u128>()));
    let server = BenchServer::start(&ServerOptions {
        bin: args.server_bin.clone(),
        apps: vec![app.clone()],
        ..ServerOptions::default()
    })
    .await?;
    let result = drive(&args, &server, &app).await;
    server.finish(result, args.keep_dir).await
}

/// What every phase shares.
struct Bench<'a> {
    args: &'a P2pArgs,
    server: &'a BenchServer,
    api: ApiClient,
    layout: Layout,
    params: RunParams,
    payload: Payload,
}

/// Makes the payload, runs the phases, and deletes the payload whatever
/// happened.
async fn drive(
    args: &P2pArgs,
    server: &BenchServer,
    app: &AppConfig,
) -> Result<(Report, Option<String>)> {
    let layout = Layout {
        dir: server.dir().to_path_buf(),
        isolation: Isolation::probe(server.dir(), args.shared_dir),
        targets: args.agents,
    };
    let params = RunParams {
        size_bytes: args.size,
        agents: args.agents,
        upload_mb: args.upload_mb,
        upload_cap_bytes_per_s: args.upload_mb * AGENT_MB,
        isolated_targets: layout.isolation == Isolation::MountNamespace,
    };
    eprintln!("writing the {}-byte payload", args.size);
    let path = layout.source_dir().join(PAYLOAD_NAME);
    let payload = match Payload::create(path.clone(), args.size).await {
        Ok(p) => p,
        Err(e) => {
            remove_files([path]);
            return Err(e);
        }
    };
    let api = ApiClient::new(server.api, app)?;
    let bench = Bench {
        args,
        server,
        api,
        layout,
        params,
        payload,
    };
    let result = bench.phases().await;
    remove_files(std::iter::once(bench.payload.path.clone()).chain(bench.copies()));
    result
}

// === impl Bench ===

impl Bench<'_> {
    async fn phases(&self) -> Result<(Report, Option<String>)> {
        if self.args.proxy {
            let (behind, crossed) = self.proxy_phase().await?;
            let reference = self.phase(Phase::P2p, None).await?;
            let report =
                Report::new(&self.params, Some(reference), None).with_proxy(behind, crossed);
            let failure = report.failure();
            return Ok((report, failure));
        }
        let mode = self.args.mode;
        let p2p = match mode {
            Mode::P2p | Mode::Both => Some(self.phase(Phase::P2p, None).await?),
            Mode::Direct => None,
        };
        let direct = match mode {
            Mode::Direct | Mode::Both => Some(self.phase(Phase::Direct, None).await?),
            Mode::P2p => None,
        };
        let report = Report::new(&self.params, p2p, direct);
        let failure = report.failure();
        Ok((report, failure))
    }

    /// The proxy phase: a proxy, the transfer to targets behind it, and
    /// the piece bytes the proxy fetched upstream (what crossed into the
    /// area).
    async fn proxy_phase(&self) -> Result<(PhaseReport, u64)> {
        let proxy = crate::proxy::start(self.server).await?;
        let behind = Some((crate::proxy::AREA, proxy.listen));
        let measured = self.phase(Phase::Proxy, behind).await;
        let crossed =
            crate::proxy::metric(&proxy, "gse_proxy_file_bytes_from_upstream_total").await;
        crate::proxy::stop(proxy).await;
        // The targets' ids are pinned to their area's identities now: the
        // next phase's agents (area 0, same addresses) get new ones.
        for ip in self.layout.target_ips() {
            let data = self
                .layout
                .dir
                .join("agents")
                .join(ip.to_string())
                .join("data");
            let _ = std::fs::remove_dir_all(data);
        }
        let report = measured?;
        Ok((report, crossed.unwrap_or(0.0) as u64))
    }

    /// Spawns the phase's agents, runs the transfer, stops them, checks and
    /// deletes the copies.
    async fn phase(
        &self,
        phase: Phase,
        behind: Option<(i64, std::net::SocketAddr)>,
    ) -> Result<PhaseReport> {
        eprintln!(
            "{phase:?} phase: starting the source and {} targets",
            self.args.agents
        );
        let what = PhaseAgents {
            upload_mb: self.args.upload_mb,
            targets_serve: phase != Phase::Direct,
            behind,
        };
        let mut swarm = Swarm::start(&self.layout, self.server, &self.api, what).await?;
        let measured = self.measure(&mut swarm, phase).await;
        swarm.stop().await;
        let mut figures = measured?;
        let copies = self.copies();
        eprintln!("{phase:?} phase: checking {} copies", copies.len());
        (figures.verified, figures.verify_problems) = self.payload.verify(copies.clone()).await;
        remove_files(copies);
        let report = PhaseReport::new(&self.params, figures);
        eprintln!(
            "{phase:?} phase: p50 {:.1}s, max {:.1}s (S/U {:.1}s), source sent {:.2} x S, {} failed",
            report.completion_s.p50,
            report.completion_s.max,
            self.params.size_bytes as f64 / self.params.upload_cap_bytes_per_s as f64,
            report.source_sent_ratio,
            report.failed
        );
        Ok(report)
    }

    /// The transfer itself, with the agents', the server's and the
    /// machine's figures (the copies are checked later).
    async fn measure(&self, swarm: &mut Swarm, phase: Phase) -> Result<PhaseFigures> {
        let (source, targets) = swarm.names();
        let plan = TransferPlan {
            source,
            source_dir: self.layout.source_dir().display().to_string(),
            file_name: self.payload.name(),
            targets,
            target_dir: self.layout.shared_target_dir().display().to_string(),
            timeout: self.timeout(phase),
            poll_every: self.args.poll_interval,
        };
        swarm.mark()?;
        let server_cpu = CpuMark::now(&self.server.proc_id())?;
        let machine = machine_cpu_ticks()?;
        let transfer = transfer::run(&self.api, &plan).await?;
        let machine_now = machine_cpu_ticks()?;
        let (busy, total) = (machine_now.0 - machine.0, machine_now.1 - machine.1);
        Ok(PhaseFigures {
            transfer,
            swarm: swarm.figures()?,
            server_cpu_percent: server_cpu.percent_since()?,
            machine_busy_percent: 100.0 * busy as f64 / total.max(1) as f64,
            verified: 0,
            verify_problems: Vec::new(),
        })
    }

    fn timeout(&self, phase: Phase) -> Duration {
        if let Some(t) = self.args.transfer_timeout {
            return t;
        }
        let ideal = self.params.size_bytes as f64 / self.params.upload_cap_bytes_per_s as f64;
        let factor = match phase {
            Phase::P2p | Phase::Proxy => 10.0,
            Phase::Direct => 3.0 * f64::from(self.args.agents),
        };
        Duration::from_secs_f64(ideal * factor).max(MIN_TIMEOUT)
    }

    /// Every target's copy of the payload (one path when they share).
    fn copies(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .layout
            .target_ips()
            .into_iter()
            .map(|ip| self.layout.target_dir(ip))
            .collect();
        dirs.dedup();
        dirs.into_iter().map(|d| d.join(PAYLOAD_NAME)).collect()
    }
}

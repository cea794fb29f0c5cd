//! `gse-bench data`: the data path's throughput (issue 5; DESIGN.md target:
//! at least 1 GB/s and 1M records/s of 1 KiB records per node, nothing
//! lost; the seed's system does 100-200 MB/s and 900k records/s per box).
//!
//! Start at [`run`]. Two phases, both fed by the same collectors
//! ([`collector`]: COMPAT.md §1.2 frames over the agent's Unix socket):
//! - **intake**: the agent's socket listener alone, in this process, with a
//!   consumer that only counts ([`intake`]) — the reference for the next;
//! - **disk**: plain appends of the volume the sink will write, to the same
//!   file system ([`reference`]) — the ceiling of any file sink here;
//! - **transport**: a real `gse-agent` and `gse-server`, records of a data
//!   id with no route (counted from the server's metrics, then dropped):
//!   the data link alone, no sink, no disk;
//! - **pipeline**: a real `gse-agent` and a real `gse-server` with a file
//!   route made through the API; the sink file is checked record by record
//!   ([`pipeline`], [`sink_reader`]): records/s, MB/s, CPU and peak RSS of
//!   each side, lost (must be 0) and duplicated records.

mod collector;
mod intake;
mod pipeline;
mod reference;
mod sink_reader;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use gse_server::role::api::AppConfig;
use serde::Serialize;

use crate::BenchOutput;
use crate::api::ApiClient;
use crate::local_agents::RealAgents;
use crate::procfs::machine_cpu_ticks;
use gse_launch::beside_current_exe;

use crate::server::{BenchServer, ServerOptions};
use collector::Load;

const APP_CODE: &str = "gse-bench";

/// Flags of `gse-bench data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// Records to send in each phase.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Payload bytes of every record.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Collector connections sending at once.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Data id of the records (and of the route made for them).
    #[arg(long, default_value_t = 1_500_001)]
    data_id: u32,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    phases: Phases,
    /// The gse-server binary; default: beside gse-bench.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the temp dir (configs, logs, the sink file).
    #[arg(long)]
    keep_dir: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phases {
    Intake,
    Pipeline,
    Both,
}

/// The bench's JSON line.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    records: u64,
    record_size: usize,
    connections: u32,
    cores: usize,
    intake: Option<intake::IntakeFigures>,
    disk: Option<reference::DiskFigures>,
    transport: Option<pipeline::TransportFigures>,
    pipeline: Option<pipeline::PipelineFigures>,
    /// pipeline records/s over intake records/s, when both ran.
    pipeline_vs_intake: Option<f64>,
    /// The sink's write rate (its file bytes over the pipeline's time) over
    /// the disk reference's sustained (synced) rate.
    sink_write_vs_disk: Option<f64>,
    /// Machine CPU busy over the whole run, percent of all cores.
    machine_busy_percent: f64,
}

pub async fn run(args: DataArgs) -> Result<BenchOutput> {
    let load = Load {
        data_id: args.data_id,
        records: args.records,
        record_size: args.record_size,
        connections: args.connections,
    };
    load.check()?;
    let (busy0, total0) = machine_cpu_ticks()?;
    let mut report = Report {
        bench: "data",
        records: args.records,
        record_size: args.record_size,
        connections: args.connections,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        intake: None,
        disk: None,
        transport: None,
        pipeline: None,
        pipeline_vs_intake: None,
        sink_write_vs_disk: None,
        machine_busy_percent: 0.0,
    };
    if args.phases != Phases::Pipeline {
        let dir = tempfile::tempdir().context("cannot create a temp dir")?;
        eprintln!(
            "intake: {} records of {} bytes",
            args.records, args.record_size
        );
        report.intake = Some(intake::run(dir.path(), load).await?);
    }
    let mut failure = None;
    if args.phases != Phases::Intake {
        let app = AppConfig::with_secret(APP_CODE, format!("{:032x}", rand::random::<u128>()));
        let server = BenchServer::start(&ServerOptions {
            bin: args.server_bin.clone(),
            apps: vec![app.clone()],
            ..ServerOptions::default()
        })
        .await?;
        // About what the sink writes: the payloads plus ~90 bytes per line.
        let volume = load.payload_bytes() + load.records * 90;
        eprintln!("disk reference: appending {volume} bytes");
        report.disk = Some(reference::run(server.dir(), volume)?);
        let result = pipeline_phase(&server, &app, load).await;
        match result {
            Ok((transport, figures)) => {
                report.transport = Some(transport);
                report.pipeline = Some(figures);
            }
            Err(e) => failure = Some(format!("{e:#}")),
        }
        let kept = server
            .finish(Ok(((), failure.clone())), args.keep_dir)
            .await;
        kept?;
    }
    if let (Some(d), Some(p)) = (&report.disk, &report.pipeline) {
        report.sink_write_vs_disk = Some(p.sink_bytes as f64 / p.seconds / 1e6 / d.synced_mb_per_s);
    }
    if let (Some(i), Some(p)) = (&report.intake, &report.pipeline) {
        report.pipeline_vs_intake = Some(p.records_per_s / i.records_per_s);
        if p.lost > 0 && failure.is_none() {
            failure = Some(format!("{} records were lost", p.lost));
        }
    }
    let (busy1, total1) = machine_cpu_ticks()?;
    report.machine_busy_percent = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * 100.0;
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

/// One real agent on the server; the load without a route, then through a
/// file route.
async fn pipeline_phase(
    server: &BenchServer,
    app: &AppConfig,
    load: Load,
) -> Result<(pipeline::TransportFigures, pipeline::PipelineFigures)> {
    let api = ApiClient::new(server.api, app)?;
    let bin = beside_current_exe("gse-agent")?;
    let agent = gse_launch::agent::spawn_local_agent(
        &bin,
        server.dir(),
        &[server.link],
        &server.agent_tls,
        gse_launch::agent::agent_ip(1),
    )?;
    let socket = agent.data_ipc.clone();
    let pid = agent
        .child
        .id()
        .context("gse-agent exited at once")?
        .to_string();
    let mut agents = RealAgents::new(vec![agent]);
    agents.wait_alive(&api).await?;
    let unrouted = Load {
        data_id: load.data_id + 1,
        ..load
    };
    eprintln!("transport: {} records with no route", load.records);
    let transport =
        pipeline::run_transport(&api, &socket, unrouted, &pid, &server.proc_id()).await?;
    let sink = pipeline::make_route(&api, server, load.data_id).await?;
    eprintln!(
        "pipeline: {} records of {} bytes through {} -> {}",
        load.records,
        load.record_size,
        socket.display(),
        sink.display()
    );
    let result = pipeline::run(&socket, sink, load, &pid, &server.proc_id()).await;
    agents.stop().await;
    Ok((transport, result?))
}

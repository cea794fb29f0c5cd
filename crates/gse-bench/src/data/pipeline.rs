//! The end-to-end phase: collectors -> a real `gse-agent`'s local socket
//! -> its data link -> a real `gse-server` DataServer -> the file sink.
//! The route is made through the data-route API as bk-monitor makes it
//! (COMPAT.md §2.3); the sink file is followed and checked record by
//! record ([`SinkReader`]); CPU is read from `/proc` for both processes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::collector::{self, Load};
use super::sink_reader::SinkReader;
use crate::api::ApiClient;
use crate::procfs::{cpu_seconds, peak_rss_kib};
use crate::server::BenchServer;

/// Relative to the server's `node.data_dir`.
const SINK_DIR: &str = "bench-sink";
const ROUTE: &str = "bench";
/// A run fails when the sink has not grown for this long.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// What the end-to-end phase measured.
#[derive(Debug, serde::Serialize)]
pub struct PipelineFigures {
    /// From the first record sent to the last one in the sink.
    pub seconds: f64,
    pub records_per_s: f64,
    /// Payload bytes per second.
    pub mb_per_s: f64,
    /// How long the collectors took to hand everything to the agent.
    pub send_seconds: f64,
    pub agent_cpu_percent: f64,
    pub server_cpu_percent: f64,
    pub agent_peak_rss_mib: f64,
    pub server_peak_rss_mib: f64,
    pub sink_bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
}

/// Makes the file stream_to and the route of `data_id`; returns the sink
/// file's path.
pub async fn make_route(
    api: &ApiClient,
    server: &BenchServer,
    data_id: u32,
) -> Result<std::path::PathBuf> {
    let op = json!({"operator_name": "admin"});
    let (stream, _): (Value, _) = api
        .call(
            "/api/v2/data/add_streamto",
            &json!({
                "operation": op,
                "metadata": {"plat_name": "bkmonitor"},
                "stream_to": {"name": "bench_file", "report_mode": "file", "data_log_path": SINK_DIR},
            }),
        )
        .await?;
    let stream_to_id = stream["stream_to_id"]
        .as_u64()
        .context("add_streamto answered without stream_to_id")?;
    let _: (Value, _) = api
        .call(
            "/api/v2/data/add_route",
            &json!({
                "operation": op,
                "metadata": {"plat_name": "bkmonitor", "channel_id": data_id},
                "route": [{"name": ROUTE, "stream_to": {"stream_to_id": stream_to_id}}],
            }),
        )
        .await?;
    Ok(server
        .dir()
        .join("data")
        .join(SINK_DIR)
        .join(format!("{data_id}_{ROUTE}.jsonl")))
}

/// Sends `load` through the agent's socket and follows the sink until every
/// record arrived.
pub async fn run(
    socket: &std::path::Path,
    sink: std::path::PathBuf,
    load: Load,
    agent_pid: &str,
    server_pid: &str,
) -> Result<PipelineFigures> {
    let (agent0, server0) = (cpu_seconds(agent_pid)?, cpu_seconds(server_pid)?);
    let began = Instant::now();
    let path = socket.to_path_buf();
    let sending = tokio::spawn(async move {
        collector::send_all(&path, load).await?;
        anyhow::Ok(began.elapsed())
    });
    let mut reader = SinkReader::new(sink.clone(), load.records);
    let mut last_growth = Instant::now();
    let mut last_report = Instant::now();
    let mut done_at = None;
    while !reader.complete() {
        let n = tokio::task::block_in_place(|| reader.poll())?;
        if n > 0 {
            last_growth = Instant::now();
            done_at = Some(began.elapsed());
            continue;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("sink: {}/{} records", reader.unique, load.records);
            last_report = Instant::now();
        }
        if last_growth.elapsed() > STALL_LIMIT {
            bail!(
                "the sink {} stopped growing at {}/{} records; first missing: {:?}",
                sink.display(),
                reader.unique,
                load.records,
                reader.missing(5)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = done_at.unwrap_or_else(|| began.elapsed()).as_secs_f64();
    let send_seconds = sending
        .await
        .context("the collectors panicked")??
        .as_secs_f64();
    let agent_cpu = cpu_seconds(agent_pid)? - agent0;
    let server_cpu = cpu_seconds(server_pid)? - server0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(PipelineFigures {
        seconds,
        records_per_s: load.records as f64 / seconds,
        mb_per_s: load.payload_bytes() as f64 / seconds / 1e6,
        send_seconds,
        agent_cpu_percent: agent_cpu / seconds * 100.0,
        server_cpu_percent: server_cpu / seconds * 100.0,
        agent_peak_rss_mib: mib(peak_rss_kib(agent_pid)?),
        server_peak_rss_mib: mib(peak_rss_kib(server_pid)?),
        sink_bytes: std::fs::metadata(&sink).map(|m| m.len()).unwrap_or(0),
        lost: load.records - reader.unique,
        duplicates: reader.duplicates,
    })
}

/// What the transport-only phase measured: agent -> DataServer with no
/// route, so no sink and no disk (the server counts and drops the records).
#[derive(Debug, serde::Serialize)]
pub struct TransportFigures {
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub agent_cpu_percent: f64,
    pub server_cpu_percent: f64,
}

/// Sends `load` (whose data id has no route) and polls the server's
/// `gse_data_unrouted_records_total` until every record was counted.
pub async fn run_transport(
    api: &ApiClient,
    socket: &std::path::Path,
    load: Load,
    agent_pid: &str,
    server_pid: &str,
) -> Result<TransportFigures> {
    let metric = format!(
        "gse_data_unrouted_records_total{{data_id=\"{}\"}}",
        load.data_id
    );
    let counted = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&metric))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let (agent0, server0) = (cpu_seconds(agent_pid)?, cpu_seconds(server_pid)?);
    let began = Instant::now();
    let path = socket.to_path_buf();
    let sending = tokio::spawn(async move { collector::send_all(&path, load).await });
    let (mut seen, mut last_change) = (0, Instant::now());
    while seen < load.records {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_seen = counted(&api.metrics_text().await?);
        if now_seen != seen {
            (seen, last_change) = (now_seen, Instant::now());
        } else if last_change.elapsed() > STALL_LIMIT {
            bail!(
                "the DataServer counted {seen}/{} records, then nothing more",
                load.records
            );
        }
    }
    let seconds = last_change.duration_since(began).as_secs_f64();
    sending.await.context("the collectors panicked")??;
    Ok(TransportFigures {
        seconds,
        records_per_s: load.records as f64 / seconds,
        mb_per_s: load.payload_bytes() as f64 / seconds / 1e6,
        agent_cpu_percent: (cpu_seconds(agent_pid)? - agent0) / seconds * 100.0,
        server_cpu_percent: (cpu_seconds(server_pid)? - server0) / seconds * 100.0,
    })
}

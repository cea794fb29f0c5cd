//! The intake phase: the agent's local data socket alone. The agent's own
//! listener ([`gse_agent::data::ipc_server::IpcServer`], the code a real
//! agent runs) is started in this process with a consumer that only counts
//! records, and the collectors send to it; the figure is what the socket
//! and its frame decoder take, before batching and the uplink.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gse_agent::data::agent_info::AgentInfo;
use gse_agent::data::ipc_server::{IpcServer, IpcServerConfig};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::collector::{self, Load};
use crate::procfs::cpu_seconds;

/// Chunks (one per socket read) the listener may queue for the consumer,
/// as the agent's own batcher takes them.
const QUEUE: usize = 64;

/// What the intake phase measured.
#[derive(Debug, serde::Serialize)]
pub struct IntakeFigures {
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// CPU of this process (collectors and listener together), percent of
    /// one core.
    pub cpu_percent: f64,
}

pub async fn run(dir: &std::path::Path, load: Load) -> Result<IntakeFigures> {
    let path = dir.join("intake.sock");
    let info = AgentInfo {
        ip: "127.0.0.1".into(),
        ..AgentInfo::default()
    };
    let (_info_tx, info_rx) = watch::channel(info);
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let config = IpcServerConfig {
        path: path.clone(),
        ..IpcServerConfig::default()
    };
    let server = IpcServer::bind_chunked(config, info_rx, tx)
        .with_context(|| format!("cannot bind the intake socket {}", path.display()))?;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));
    let want = load.records;
    let counter = tokio::spawn(async move {
        let mut n = 0u64;
        let mut bytes = 0u64;
        while n < want {
            match rx.recv().await {
                Some(chunk) => {
                    n += chunk.len() as u64;
                    bytes += chunk.iter().map(|r| r.payload.len() as u64).sum::<u64>();
                }
                None => break,
            }
        }
        (n, bytes)
    });
    let me = std::process::id().to_string();
    let cpu0 = cpu_seconds(&me)?;
    let began = Instant::now();
    collector::send_all(&path, load).await?;
    let (n, bytes) = tokio::time::timeout(Duration::from_secs(120), counter)
        .await
        .context("the intake consumer did not see every record within 120 s")??;
    let seconds = began.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&me)? - cpu0;
    shutdown.cancel();
    let _ = serving.await;
    if n != load.records || bytes != load.payload_bytes() {
        bail!(
            "the intake socket delivered {n} records ({bytes} bytes), expected {} ({})",
            load.records,
            load.payload_bytes()
        );
    }
    Ok(IntakeFigures {
        seconds,
        records_per_s: n as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        cpu_percent: cpu / seconds * 100.0,
    })
}

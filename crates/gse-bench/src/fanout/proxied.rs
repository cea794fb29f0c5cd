//! `gse-bench fanout --proxy` (issue 12, "10,000 simulated agents behind
//! one proxy"): the simulated agents are of cloud area 7 and connect to a
//! real `gse-proxy` process (started as quickstart starts one, linked to
//! the real server), which relays them all over its one link; the task is
//! POSTed to the server as usual. Then the same agents connected directly
//! to a fresh server are the reference: the line carries the proxy's RSS
//! and CPU and the ratio of the seen times.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::certs::CertDir;
use gse_launch::quickstart::areas::{self, AreaOption, LocalProxy};
use tokio::time::{Instant, sleep};

use super::report::{PROXY_MAX_RATIO, PROXY_TARGET, Report};
use super::{Behind, FanoutArgs, bench_app, drive, max_hosts, single_node};
use crate::BenchOutput;
use crate::server::{BenchServer, ServerOptions};

/// The simulated agents' cloud area.
const AREA: i64 = 7;
/// Time the proxy has to link to the server.
const LINK_WITHIN: Duration = Duration::from_secs(30);

/// The run behind the proxy, then (unless `--no-reference`) the direct
/// one, as one line.
pub async fn run(args: &FanoutArgs) -> Result<BenchOutput> {
    if args.real_agents.is_some() || args.nodes > 1 {
        bail!("--proxy runs simulated agents on one node (drop --real-agents and --nodes)");
    }
    let (mut report, mut failure) = behind_proxy(args).await?;
    if !args.no_reference {
        eprintln!(
            "reference: the same {} agents connected directly",
            args.agents
        );
        let (reference, reference_failure) = single_node(args).await?;
        report.compare_to(&reference, (PROXY_TARGET, PROXY_MAX_RATIO));
        if failure.is_none() {
            failure = reference_failure.map(|f| format!("reference run: {f}"));
        }
    }
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

async fn behind_proxy(args: &FanoutArgs) -> Result<(Report, Option<String>)> {
    let app = bench_app();
    let server = BenchServer::start(&ServerOptions {
        bin: args.server_bin.clone(),
        max_hosts_per_call: Some(max_hosts(args)),
        apps: vec![app.clone()],
        ..ServerOptions::default()
    })
    .await?;
    let result = async {
        let bin = gse_launch::beside_current_exe("gse-proxy")?;
        let certs = CertDir::new(server.certs_dir());
        let area = AreaOption {
            bk_cloud_id: AREA,
            agents: 0,
        };
        let mut proxy =
            areas::start_proxy(&bin, (server.dir(), &certs), (&area, 0), &[server.link])?;
        let ran = async {
            wait_linked(&mut proxy).await?;
            let behind = Behind {
                area: AREA,
                pid: proxy.entry.pid.to_string(),
            };
            drive(args, &server, &app, &[proxy.listen], Some(&behind)).await
        }
        .await;
        areas::stop_proxies(std::slice::from_mut(&mut proxy), Duration::from_secs(5)).await;
        ran
    }
    .await;
    server.close(result, args.keep_dir).await
}

/// Waits until the proxy says it is linked upstream.
async fn wait_linked(proxy: &mut LocalProxy) -> Result<()> {
    let deadline = Instant::now() + LINK_WITHIN;
    loop {
        areas::check_running(std::slice::from_mut(proxy))?;
        let text = match reqwest::get(&proxy.entry.metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.lines().any(|l| l == "gse_proxy_upstream_connected 1") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "the proxy did not link to the server within {LINK_WITHIN:?}; its log: {}",
                proxy.log.display()
            ))
            .context("starting the proxy");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

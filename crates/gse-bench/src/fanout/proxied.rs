//! `gse-bench fanout --proxy` (issue 12, "10,000 simulated agents behind
//! one proxy"): the simulated agents are of cloud area 7 and connect to a
//! real `gse-proxy` process (started as quickstart starts one, linked to
//! the real server), which relays them all over its one link; the task is
//! POSTed to the server as usual. Then the same agents connected directly
//! to a fresh server are the reference: the line carries the proxy's RSS
//! and CPU and the ratio of the seen times.

use anyhow::{Result, bail};

use super::report::{PROXY_MAX_RATIO, PROXY_TARGET, Report};
use super::{Behind, FanoutArgs, bench_app, drive, server_options, single_node};
use crate::server::BenchServer;
use crate::{BenchOutput, proxy};

/// The run behind the proxy, then (unless `--no-reference`) the direct
/// one, as one line.
pub async fn run(args: &FanoutArgs) -> Result<BenchOutput> {
    if args.real_agents.is_some() || args.nodes > 1 {
        bail!("--proxy runs simulated agents on one node (drop --real-agents and --nodes)");
    }
    let split = cores(args)?;
    let (mut report, mut failure) = behind_proxy(args, split.as_ref()).await?;
    if !args.no_reference {
        eprintln!(
            "reference: the same {} agents connected directly",
            args.agents
        );
        let (reference, reference_failure) = single_node(args).await?;
        report.compare_to(&reference, (PROXY_TARGET, PROXY_MAX_RATIO));
        report.cores_split = split.as_ref().map(|s| s.describe());
        if failure.is_none() {
            failure = reference_failure.map(|f| format!("reference run: {f}"));
        }
    }
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

/// Which cores the proxy, and the server with the bench, run on.
struct CoreSplit {
    others: Vec<usize>,
    proxy: usize,
}

impl CoreSplit {
    fn describe(&self) -> String {
        format!(
            "proxy on cpu {}; server and bench on cpus {:?} (both runs)",
            self.proxy, self.others
        )
    }
}

/// Pins this process (and so the servers it starts) off the last core,
/// which the proxy gets; `None` with --share-cores or on one core.
fn cores(args: &FanoutArgs) -> Result<Option<CoreSplit>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.share_cores || n < 2 {
        return Ok(None);
    }
    let split = CoreSplit {
        others: (0..n - 1).collect(),
        proxy: n - 1,
    };
    crate::procfs::pin_process("self", &split.others)?;
    eprintln!("{}", split.describe());
    Ok(Some(split))
}

async fn behind_proxy(
    args: &FanoutArgs,
    split: Option<&CoreSplit>,
) -> Result<(Report, Option<String>)> {
    let app = bench_app();
    let server = BenchServer::start(&server_options(args, &app)).await?;
    let result = async {
        let proxy = proxy::start(&server).await?;
        if let Some(split) = split {
            // Its runtime's threads exist by now (it is linked).
            crate::procfs::pin_process(&proxy.entry.pid.to_string(), &[split.proxy])?;
        }
        let behind = Behind {
            area: proxy::AREA,
            pid: proxy.entry.pid.to_string(),
        };
        let ran = drive(args, &server, &app, &[proxy.listen], Some(&behind)).await;
        proxy::stop(proxy).await;
        ran
    }
    .await;
    server.close(result, args.keep_dir).await
}

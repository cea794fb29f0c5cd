//! `gse-bench fanout --nodes N` (issue 11, "Fan-out across nodes"): the
//! same rounds on a cluster of N gse-server processes sharing ZooKeeper
//! and Redis, then on one embedded node as the reference.
//!
//! Nodes do not balance agents yet (an agent registers with the first
//! server of its list that answers), so the bench spreads them: simulated
//! agent i connects to node i % N. The task is POSTed to node 1 and polled
//! there, so about (N-1)/N of it is forwarded over the node links and the
//! results come back through them. The server figures of the line (RSS,
//! CPU, metrics) are node 1's, the node that owns the task.

use anyhow::{Result, bail};

use super::report::Report;
use super::{FanoutArgs, bench_app, drive, server_options, single_node};
use crate::BenchOutput;
use crate::api::ApiClient;
use crate::cluster::{BenchCluster, wait_members};

/// The cluster run, then (unless `--no-reference`) the one-node run, as
/// one line: the cluster's figures with the reference's and their ratio.
pub async fn run(args: &FanoutArgs) -> Result<BenchOutput> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.real_agents.is_some() {
        bail!("cluster mode runs simulated agents only (drop --real-agents)");
    }
    let (mut report, mut failure) = cluster(args).await?;
    if !args.no_reference {
        eprintln!("reference: the same {} agents on one node", args.agents);
        let (reference, reference_failure) = single_node(args).await?;
        report.compare(&reference);
        if failure.is_none() {
            failure = reference_failure.map(|f| format!("reference run: {f}"));
        }
    }
    Ok(BenchOutput {
        line: serde_json::to_string(&report)?,
        failure,
    })
}

/// ZooKeeper + Redis, N nodes, the rounds; everything stopped after.
async fn cluster(args: &FanoutArgs) -> Result<(Report, Option<String>)> {
    let app = bench_app();
    let template = server_options(args, &app);
    let cluster = BenchCluster::start(args.nodes, &template).await?;
    let links: Vec<_> = cluster.nodes.iter().map(|n| n.link).collect();
    let result = async {
        let api = ApiClient::new(cluster.nodes[0].api, &app)?;
        wait_members(&api, args.nodes).await?;
        drive(args, &cluster.nodes[0], &app, &links, None).await
    }
    .await;
    let failed = !matches!(&result, Ok((_, None)));
    cluster.stop(args.keep_dir || failed).await;
    result
}

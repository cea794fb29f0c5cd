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

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::{Instant, sleep};

use super::report::Report;
use super::{FanoutArgs, bench_app, drive, max_hosts, single_node};
use crate::BenchOutput;
use crate::api::ApiClient;
use crate::cluster::Services;
use crate::server::{BenchServer, ClusterMember, ServerOptions};

/// How long node 1 has to list every node after they all started.
const MEMBERS_WITHIN: Duration = Duration::from_secs(30);

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
    let dir = tempfile::Builder::new()
        .prefix("gse-bench-services-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let services = match Services::start(dir.path()).await {
        Ok(s) => s,
        Err(e) => {
            let kept = dir.keep();
            return Err(e.context(format!("see {}", kept.display())));
        }
    };
    let app = bench_app();
    let mut nodes: Vec<BenchServer> = Vec::new();
    for i in 0..args.nodes {
        let member = ClusterMember {
            node_id: node_id(i),
            zookeeper: services.zookeeper.to_string(),
            redis: services.redis_url(),
            certs: nodes.first().map(BenchServer::certs_dir),
        };
        let started = BenchServer::start(&ServerOptions {
            bin: args.server_bin.clone(),
            max_hosts_per_call: Some(max_hosts(args)),
            apps: vec![app.clone()],
            cluster: Some(member),
            ..ServerOptions::default()
        })
        .await;
        match started {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(nodes, true).await;
                eprintln!("ZooKeeper and Redis files kept in {}", dir.keep().display());
                return Err(e.context(format!("cannot start {}", node_id(i))));
            }
        }
    }
    let links: Vec<_> = nodes.iter().map(|n| n.link).collect();
    let result = async {
        let api = ApiClient::new(nodes[0].api, &app)?;
        wait_members(&api, args.nodes).await?;
        drive(args, &nodes[0], &app, &links).await
    }
    .await;
    let failed = !matches!(&result, Ok((_, None)));
    let keep = args.keep_dir || failed;
    let first = nodes.remove(0);
    stop_all(nodes, keep).await;
    let closed = first.close(result, args.keep_dir).await;
    if keep {
        eprintln!("ZooKeeper and Redis files kept in {}", dir.keep().display());
    }
    drop(services);
    closed
}

/// Stops the nodes (SIGTERM, then SIGKILL), keeping their files if asked.
async fn stop_all(nodes: Vec<BenchServer>, keep: bool) {
    for mut node in nodes {
        node.stop().await;
        if keep {
            let dir: PathBuf = node.keep_dir();
            eprintln!("node files kept in {}", dir.display());
        }
    }
}

/// Waits until node 1 lists all `n` nodes (K1), so that work for agents
/// of the others can be forwarded from the first round on.
async fn wait_members(api: &ApiClient, n: u32) -> Result<()> {
    let want = member_ids(n);
    let deadline = Instant::now() + MEMBERS_WITHIN;
    loop {
        let got = api.node_ids().await?;
        if got == want {
            eprintln!("cluster of {n} nodes formed");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node-1 lists {got:?} after {MEMBERS_WITHIN:?}, expected {want:?}");
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Every node's id, sorted as `list_nodes` sorts them (by string).
fn member_ids(n: u32) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(node_id).collect();
    ids.sort();
    ids
}

/// Node i's id (0-based i): `node-1`, `node-2`, ...
fn node_id(i: u32) -> String {
    format!("node-{}", i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_sort_as_list_nodes_does() {
        assert_eq!(member_ids(3), ["node-1", "node-2", "node-3"]);
        let twelve = member_ids(12);
        assert_eq!(&twelve[..4], ["node-1", "node-10", "node-11", "node-12"]);
    }
}

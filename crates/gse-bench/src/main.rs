//! `gse-bench`: the performance targets of DESIGN.md as commands, each
//! printing exactly one JSON line on stdout (progress goes to stderr).
//!
//! Every bench is a subcommand in its own module: start at [`Command`].
//! Benches run the REAL binaries ([`server`] spawns the built `gse-server`)
//! and either simulate many agents over real TCP + mutual TLS connections,
//! speaking the real link protocol ([`sim`], whose tasks run through the
//! Executor seam's simulation runner; in this process, or for `scale` in
//! one `sim-agents` child per node, [`sim::process`]), or spawn real
//! `gse-agent` processes ([`local_agents`]; `fanout --real-agents`, `p2p`).
//! All drive the server through its HTTP API ([`api`]). [`procfs`] reads
//! the processes' figures (RSS, CPU, bytes written, fd limits); [`prom`]
//! and [`redis_info`] the servers' and Redis' own counters. The timed
//! tests of the workspace live in each crate's `tests/`, not here.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod agents;
mod api;
mod cluster;
mod data;
mod failover;
mod fanout;
mod local_agents;
mod p2p;
mod procfs;
mod prom;
mod proxy;
mod redis_info;
mod scale;
mod server;
mod sim;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Benchmarks of gse against its performance targets (DESIGN.md), each
/// printing one JSON line on stdout.
#[derive(Parser, Debug)]
#[command(name = "gse-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hold K simulated agents on one real gse-server, heartbeating; report
    /// connect rate, heartbeat rate, and the server's RSS and CPU.
    Agents(agents::AgentsArgs),
    /// Run `echo hello` on K simulated agents (or N real gse-agent
    /// processes) through the task API, every result back; report latency
    /// percentiles and the server's RSS and CPU.
    Fanout(fanout::FanoutArgs),
    /// Send one file (default 1 GiB) to N real gse-agent processes whose
    /// uploads are all capped at U, P2P and as a direct-copy baseline;
    /// report completion times against S/U, bytes the source sent, and
    /// the agents' peak RSS.
    P2p(p2p::P2pArgs),
    /// Send N records (default 1M of 1 KiB) through the agent's local data
    /// socket alone, then through a real agent and server into a file sink;
    /// report records/s, MB/s, CPU and RSS per side, lost and duplicated
    /// records.
    Data(data::DataArgs),
    /// Kill a cluster node holding K simulated agents (default 19,000)
    /// and time until they are registered with the other nodes and alive
    /// again through the API (needs ZooKeeper and Redis installed).
    Failover(failover::FailoverArgs),
    /// Hold K heartbeating simulated agents (default 19,000) on each of N
    /// cluster nodes (default 5); report every node's RSS and CPU, Redis'
    /// CPU and ops/s, and how heartbeats are batched (needs ZooKeeper and
    /// Redis installed).
    Scale(scale::ScaleArgs),
    /// Internal: the simulated agents of one `scale` node, in a child
    /// process of their own (a process may hold only so many descriptors).
    #[command(hide = true)]
    SimAgents(sim::process::SimAgentsArgs),
}

/// What a bench hands back: its JSON line, and what went wrong if the run
/// was not clean (the line is printed either way, then the exit code is 1).
pub struct BenchOutput {
    pub line: String,
    pub failure: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let out = match cli.command {
        Command::Agents(args) => rt.block_on(agents::run(args)),
        Command::Fanout(args) => rt.block_on(fanout::run(args)),
        Command::P2p(args) => rt.block_on(p2p::run(args)),
        Command::Data(args) => rt.block_on(data::run(args)),
        Command::Failover(args) => rt.block_on(failover::run(args)),
        Command::Scale(args) => rt.block_on(scale::run(args)),
        Command::SimAgents(args) => {
            rt.block_on(sim::process::run_child(args))?;
            // Not waiting for the agents' tasks or the stdin reader.
            std::process::exit(0);
        }
    }?;
    println!("{}", out.line);
    match out.failure {
        Some(failure) => anyhow::bail!("{failure}"),
        None => Ok(()),
    }
}

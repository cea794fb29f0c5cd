//! gsectl: the gse HTTP API from a terminal.
//!
//! `main` parses the command line (the clap definitions below are the
//! `--help`), resolves where the API is and which app to call it as
//! ([`connection`]), and hands a ready [`client::ApiClient`] to the
//! subcommand. Each subcommand is one module (`agents`, `exec`, `push`,
//! `call`); a new one is a
//! variant of [`Command`] plus its module. Tables are rendered by [`table`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod agents;
mod call;
mod client;
mod connection;
mod exec;
mod nodes;
mod push;
mod table;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use client::ApiClient;
use connection::ConnectionArgs;

/// Look at and drive a gse cluster through its HTTP API.
///
/// Connection settings come from flags, then the environment, then a
/// quickstart.json (`--quickstart`, else ./gse-quickstart/quickstart.json).
/// A call the server refuses prints `error: <message> (code N)` and exits 1.
#[derive(Parser, Debug)]
#[command(name = "gsectl", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List agents with their state, version, CPU, memory and last heartbeat.
    Agents(agents::AgentsArgs),
    /// List the cluster's server nodes: region, roles, addresses and the
    /// agents each holds.
    Nodes(nodes::NodesArgs),
    /// Run a command or script on many hosts; live progress, then each
    /// host's output, grouped when identical. Exit code 1 if any host failed.
    Exec(exec::ExecArgs),
    /// Send a file, a directory or matching files from one agent to many
    /// (P2P between the targets); a bar per target, then the results
    /// grouped by outcome. Exit code 1 if any target failed.
    Push(push::PushArgs),
    /// Call any API endpoint by its path (data routes, process operations,
    /// snapshots, ...) with a JSON body; prints the answer's `data`.
    Call(call::CallArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand; `Ok(false)` means it ran but something failed
/// (e.g. a host of `exec`), which exits with 1 without another message.
async fn run(cli: Cli) -> Result<bool> {
    let connection = cli.connection.resolve()?;
    let client = ApiClient::new(&connection)?;
    match &cli.command {
        Command::Agents(args) => agents::run(&client, args).await.map(|()| true),
        Command::Nodes(args) => nodes::run(&client, args).await.map(|()| true),
        Command::Exec(args) => exec::run(&client, args).await,
        Command::Push(args) => push::run(&client, args).await,
        Command::Call(args) => call::run(&client, args).await.map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "gsectl",
            "agents",
            "--api",
            "http://x",
            "--alive-only",
            "0:10.0.0.1",
        ])
        .unwrap();
        assert_eq!(cli.connection.api.as_deref(), Some("http://x"));
        let Command::Agents(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert!(args.alive_only);
        assert_eq!(args.agents, ["0:10.0.0.1"]);
    }

    #[test]
    fn exec_takes_hosts_user_timeout_and_a_command() {
        let cli = Cli::try_parse_from([
            "gsectl",
            "exec",
            "--hosts",
            "0:127.0.0.1,0:127.0.0.2",
            "--user",
            "app",
            "--timeout",
            "5",
            "--",
            "echo",
            "-n",
            "hi",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(args.hosts, ["0:127.0.0.1", "0:127.0.0.2"]);
        assert_eq!(args.timeout, 5);
        assert_eq!(args.command, ["echo", "-n", "hi"]);
    }
}

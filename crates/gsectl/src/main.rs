//! gsectl: the gse HTTP API from a terminal.
//!
//! `main` parses the command line (the clap definitions below are the
//! `--help`), resolves where the API is and which app to call it as
//! ([`connection`]), and hands a ready [`client::ApiClient`] to the
//! subcommand. Each subcommand is one module (`agents`); a new one is a
//! variant of [`Command`] plus its module. Tables are rendered by [`table`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod agents;
mod client;
mod connection;
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let connection = cli.connection.resolve()?;
    let client = ApiClient::new(&connection)?;
    match &cli.command {
        Command::Agents(args) => agents::run(&client, args).await,
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
        let Command::Agents(args) = cli.command;
        assert!(args.alive_only);
        assert_eq!(args.agents, ["0:10.0.0.1"]);
    }
}

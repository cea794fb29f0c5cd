//! `gse-agent`: run the agent of this host.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gse_agent::{Agent, AgentConfig};
use tokio_util::sync::CancellationToken;

/// The gse agent: keeps this host connected to its gse-server (mutual TLS),
/// reports heartbeats with its own cpu and memory, runs tasks and moves
/// files (serving pieces to other agents), and (in later versions) sends
/// data.
#[derive(Parser, Debug)]
#[command(name = "gse-agent", version)]
struct Cli {
    /// Agent config file (TOML); see docs/CONFIG.md.
    #[arg(
        short = 'c',
        long,
        env = "GSE_AGENT_CONFIG",
        default_value = "/etc/gse/gse-agent.toml",
        global = true
    )]
    config: PathBuf,
    #[command(flatten)]
    log: gse_core::logging::LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent in the foreground until SIGTERM or SIGINT (the default).
    Run,
    /// Check the config file and print the agent's identity, then exit.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init(None).context("cannot open the log file")?;
    let config = AgentConfig::load(&cli.config)?;
    let agent = Agent::new(config.clone())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("config {} is valid", cli.config.display());
            println!("agent_id: {}", agent.agent_id());
            println!("cloud_id: {}", config.agent.cloud_id);
            match config.agent.identity_ip {
                Some(ip) => println!("identity_ip: {ip}"),
                None => println!("identity_ip: (the local address of the upstream connection)"),
            }
            println!("upstream: {}", config.upstream.servers.join(", "));
            match config.file.p2p_listen {
                Some(addr) => println!("p2p_listen: {addr}"),
                None => println!("p2p_listen: (none: serves no file pieces to peers)"),
            }
            Ok(())
        }
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tracing::info!(agent_id = %agent.agent_id(), version = gse_core::VERSION, "gse-agent starting");
            agent.run(shutdown).await;
            tracing::info!("gse-agent stopped");
            Ok(())
        }
    }
}

#[cfg(unix)]
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}

/// Ctrl-C only; running as a Windows service is not implemented yet.
#[cfg(not(unix))]
async fn stop_on_signal(shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

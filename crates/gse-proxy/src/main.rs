//! `gse-proxy`: run the relay of one isolated cloud area.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gse_core::private_files;
use gse_proxy::ProxyConfig;
use tokio_util::sync::CancellationToken;

/// The gse proxy of one cloud area: the area's agents connect to it as to
/// a server (mutual TLS with its proxy certificate), and it relays them
/// over one link to any node of the gse-server cluster, failing over
/// between nodes, or to the next proxy up a chain.
#[derive(Parser, Debug)]
#[command(name = "gse-proxy", version)]
struct Cli {
    /// Proxy config file (TOML); every key with its default: etc/gse-proxy.toml.
    #[arg(
        short = 'c',
        long,
        env = "GSE_PROXY_CONFIG",
        default_value = "/etc/gse/gse-proxy.toml",
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
    /// Run the proxy in the foreground until SIGTERM or SIGINT (the default).
    Run,
    /// Check the config file and print what the proxy would do, then exit.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(proxy_main())
}

async fn proxy_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init(None).context("cannot open the log file")?;
    let config = ProxyConfig::load(&cli.config)?;
    let key = &config.tls.key_file;
    let exposed = private_files::exposure(key, "the proxy's private TLS key");
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            let p = &config.proxy;
            println!("config {} is valid", cli.config.display());
            println!("proxy: {} (cloud area {})", p.id, p.bk_cloud_id);
            println!("listen: {}", p.listen);
            println!("agents are told: {}", config.agent_addr(p.listen));
            println!("upstream: {}", config.upstream.servers.join(", "));
            match config.metrics.listen {
                Some(addr) => println!("metrics: http://{addr}/metrics"),
                None => println!("metrics: (none)"),
            }
            if let Some(exposed) = exposed {
                eprintln!("warning: {exposed}");
            }
            Ok(())
        }
        Command::Run => {
            if let Some(exposed) = exposed {
                tracing::warn!("{exposed}");
            }
            // Each of the area's agents is a descriptor or two.
            if let Err(e) = gse_core::rlimit::raise_open_files() {
                tracing::warn!("{e}; fewer agents can connect");
            }
            let shutdown = CancellationToken::new();
            if let Err(e) = gse_proxy::start(config, shutdown.clone()).await {
                // Into the log file too, not only stderr.
                tracing::error!("gse-proxy cannot start: {e}");
                return Err(e.into());
            }
            stop_on_signal().await;
            tracing::info!("gse-proxy stopping");
            shutdown.cancel();
            Ok(())
        }
    }
}

async fn stop_on_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

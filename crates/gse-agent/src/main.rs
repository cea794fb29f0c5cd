//! `gse-agent`: run the agent of this host.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gse_agent::{Agent, AgentConfig};
use gse_core::private_files;
use tokio_util::sync::CancellationToken;

/// The gse agent: keeps this host connected to its gse-server (mutual TLS),
/// reports heartbeats with its own cpu and memory, runs tasks and moves
/// files (serving pieces to other agents), and carries local collectors'
/// data to the DataServer (local socket, spool, at-least-once).
#[derive(Parser, Debug)]
#[command(name = "gse-agent", version)]
struct Cli {
    /// Agent config file (TOML); every key with its default: etc/gse-agent.toml.
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
    /// Run the agent in the foreground until SIGTERM or SIGINT (the
    /// default). With `[watchdog] enabled` (the default of a packaged
    /// config) this process is the watchdog: it runs the agent as a worker
    /// process and starts it again when it crashes or goes over its memory
    /// or cpu budget; plugins keep running across a restart.
    Run(RunArgs),
    /// The agent itself, as the watchdog starts it (not for direct use).
    #[command(hide = true)]
    Worker,
    /// Check the config file and print the agent's identity, then exit.
    CheckConfig,
    /// Get this agent's own certificate from a node with a one-time token
    /// (`gse-server enroll token` prints this command), written where the
    /// config's [tls] says; then start the agent.
    Join(JoinArgs),
    /// Send stdin to the running agent's local data socket (D1): every
    /// non-empty line becomes one record (a 0xC01 frame) of `--data-id`.
    /// Prints how many records were sent. The socket is `--socket`, or the
    /// `[data] ipc` path of the config file (`--config`).
    Send(SendArgs),
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// Run the agent in this process, without a watchdog, whatever
    /// `[watchdog] enabled` says.
    #[arg(long)]
    no_watchdog: bool,
}

#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// The node's agent link, host:port.
    #[arg(long)]
    server: String,
    /// The token, "<id>.<secret>"; good once.
    #[arg(long)]
    token: String,
    /// SHA-256 of the CA certificate (hex), as `enroll token` printed it:
    /// the node must prove it is from that CA before the token is sent.
    #[arg(long)]
    ca_sha256: String,
    /// Replace a certificate and key already at the config's [tls] paths.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Data id (channel id) of the records; a route for it must exist on
    /// the DataServer, else they are counted and dropped there.
    #[arg(long)]
    data_id: u32,
    /// The agent's local data socket; default: `[data] ipc` of the config.
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // Before anything opens a descriptor of its own (the runtime, the log).
    close_inherited_descriptors();
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(agent_main())
}

/// Closes every descriptor above stderr that this process inherited: a
/// service manager, installer or shell that started the agent with an open
/// file or socket would otherwise pass it on to every task and plugin the
/// agent runs as any user. (Descriptors the agent opens itself are
/// close-on-exec: std, tokio and socket2 open them so.) Best effort: a
/// descriptor that cannot be closed is reported once on stderr. (Closed
/// stdin, stdout or stderr need no care here: Rust's runtime reopens them
/// on /dev/null before `main`.)
fn close_inherited_descriptors() {
    #[cfg(unix)]
    {
        let fds: Vec<i32> =
            match std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd")) {
                Ok(dir) => dir
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|fd| *fd > 2)
                    .collect(),
                Err(_) => return,
            };
        // The listing's own descriptor is among them and already closed by
        // now: EBADF is expected for that one.
        for fd in fds {
            match nix::unistd::close(fd) {
                Ok(()) | Err(nix::errno::Errno::EBADF) => {}
                Err(e) => eprintln!("gse-agent: cannot close inherited descriptor {fd}: {e}"),
            }
        }
    }
}

async fn agent_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init(None).context("cannot open the log file")?;
    if let Some(Command::Send(args)) = &cli.command {
        return send(&cli.config, args);
    }
    if let Some(Command::Join(args)) = &cli.command {
        // Read for its [tls] paths and identity; the files need not exist.
        let config = AgentConfig::load(&cli.config)?;
        let opts = gse_agent::join::JoinOptions {
            server: args.server.clone(),
            token: args.token.clone(),
            ca_sha256: args.ca_sha256.clone(),
            force: args.force,
        };
        let joined = gse_agent::join::join(&config, &opts).await?;
        println!(
            "joined as {}: certificate in {}, key in {}; start the agent now (systemctl start gse-agent)",
            joined.identity,
            config.tls.cert_file.display(),
            config.tls.key_file.display()
        );
        return Ok(());
    }
    let config = AgentConfig::load(&cli.config)?;
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    if let Command::Run(args) = &command
        && config.watchdog.enabled
        && !args.no_watchdog
    {
        let mut worker = vec!["--config".into(), cli.config.clone().into_os_string()];
        worker.extend(cli.log.to_args());
        worker.push("worker".into());
        return gse_agent::watchdog::supervise(&config.watchdog, worker).await;
    }
    let agent = Agent::new(config.clone())?;
    match command {
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
                Some(addr) => {
                    println!("p2p_listen: {addr}");
                    let advertised = config
                        .file
                        .describe_advertised(addr, config.agent.identity_ip);
                    println!("p2p_advertised: {advertised}");
                }
                None => {
                    println!("p2p_listen: (none: serves no file pieces to peers)");
                    println!("p2p_advertised: (none)");
                }
            }
            let data_dir = &config.agent.data_dir;
            println!("data_ipc: {}", config.data.ipc_path(data_dir).display());
            for link in &config.data.ipc_links {
                println!("data_ipc_link: {}", link.display());
            }
            println!(
                "message_ipc: {}",
                config.plugin.message_ipc(data_dir).display()
            );
            for link in &config.plugin.message_ipc_links {
                println!("message_ipc_link: {}", link.display());
            }
            println!("data_spool: {}", config.data.spool_path(data_dir).display());
            let key = &config.tls.key_file;
            if let Some(exposed) = private_files::exposure(key, "the agent's private TLS key") {
                eprintln!("warning: {exposed}");
            }
            Ok(())
        }
        Command::Run(_) | Command::Worker => {
            if let Some(exposed) =
                private_files::exposure(&config.tls.key_file, "the agent's private TLS key")
            {
                tracing::warn!("{exposed}");
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(gse_agent::stop_on_signal(shutdown.clone()));
            let agent = if matches!(command, Command::Worker) {
                gse_agent::watchdog::watch_parent(shutdown.clone());
                agent.with_restart(gse_agent::watchdog::Restart::from_env())
            } else {
                agent
            };
            tracing::info!(agent_id = %agent.agent_id(), version = gse_core::VERSION, pid = std::process::id(), "gse-agent starting");
            if let Err(e) = agent.run(shutdown).await {
                // Into the agent's log file too, not only stderr.
                tracing::error!("gse-agent cannot run: {e}");
                return Err(e.into());
            }
            tracing::info!("gse-agent stopped");
            Ok(())
        }
        Command::Send(_) | Command::Join(_) => unreachable!("handled before loading the agent"),
    }
}

/// `gse-agent send`: stdin lines -> records on the local socket.
#[cfg(unix)]
fn send(config: &std::path::Path, args: &SendArgs) -> anyhow::Result<()> {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let cfg = AgentConfig::load(config)
                .context("no --socket given, so the socket path comes from the config")?;
            cfg.data.ipc_path(&cfg.agent.data_dir)
        }
    };
    let stdin = std::io::stdin().lock();
    let sent = gse_agent::data::send::send_lines(&socket, args.data_id, stdin)?;
    println!(
        "sent {sent} records to {} (data id {})",
        socket.display(),
        args.data_id
    );
    Ok(())
}

#[cfg(not(unix))]
fn send(_config: &std::path::Path, _args: &SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("gse-agent send needs a unix socket; not supported on this platform yet")
}

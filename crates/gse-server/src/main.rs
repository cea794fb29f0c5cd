//! `gse-server`: run a node, make certificates, manage apps and identity
//! pins, or start a complete single-node platform with `quickstart`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gse_core::AgentKey;
use gse_core::app_secret::{self, SecretHash};
use gse_core::certs::{CertDir, CertKind, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS, IdentityMark};
use gse_core::seams::AppRecord;
use gse_server::config::ServerConfig;
use gse_server::node::Node;
use gse_server::quickstart::{self, AreaOption, ClusterOptions, QuickstartOptions};
use gse_server::reach::{self, Reach};

/// The gse server: holds agent connections (mutual TLS), serves the HTTP API
/// upper systems call (job platform, node manager, monitoring), and raises
/// alarms. With no ZooKeeper or Redis configured it is a complete
/// single-node platform on its embedded store.
#[derive(Parser, Debug)]
#[command(name = "gse-server", version)]
struct Cli {
    #[command(flatten)]
    log: gse_core::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server node from a config file until SIGTERM or SIGINT.
    Run {
        /// Server config file (TOML); every key with its default: etc/gse-server.toml.
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Start a server and N local agents on the embedded store, ready for
    /// gsectl; or, with --nodes N --zookeeper --redis, a cluster of N node
    /// processes on this host.
    Quickstart(QuickstartArgs),
    /// Make the CA and the certificates of a deployment.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Manage the apps (bk_app_code/bk_app_secret) allowed to call the API.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage agent identity pins: each cloud_id:ip is pinned to the first
    /// agent id that registered with it; another agent id claiming it is
    /// refused (identity_conflict alarm) until the pin is released.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Let agents join with a token (`gse-agent join`) instead of copying a
    /// shared key to every host; needs `[enroll] enabled` on the node.
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// Print the HTTP API's OpenAPI 3.1 document (what a node serves at
    /// GET /api/openapi.json; docs/openapi.json is this output).
    Openapi,
    /// Check a config file and print it with every default filled in.
    CheckConfig {
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EnrollCommand {
    /// Make a token an agent joins with, good once and for --ttl, and print
    /// the agent's join command. Without --ip the agent gets the identity
    /// of the address it connects from; with it (hosts behind NAT), that
    /// identity, from anywhere.
    Token {
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
        /// How long the token is good (at most enroll.max_ttl).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Pin the agent's cloud area.
        #[arg(long)]
        cloud_id: Option<i64>,
        /// Pin the agent's identity IP.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// The node address agents dial (host:port) for the printed command;
        /// default: node.advertise_ip (else this host's name) and link.listen's port.
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Args, Debug)]
struct QuickstartArgs {
    /// Directory for certificates, state, logs and quickstart.json (created).
    #[arg(long, default_value = "./gse-quickstart")]
    dir: PathBuf,
    /// Number of local agents, with identity IPs 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    agents: u32,
    /// Address of the HTTP API (port 0 picks a free one). With --nodes,
    /// the first node's: node i listens on its port + i-1 (each picks a
    /// free one if 0).
    #[arg(long, default_value = "127.0.0.1:59313")]
    api_listen: SocketAddr,
    /// Address agents connect to (port 0 picks a free one). With --nodes,
    /// the first node's, like --api-listen.
    #[arg(long, default_value = "127.0.0.1:28668")]
    agent_listen: SocketAddr,
    /// The gse-agent binary; default: next to gse-server.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Start a cluster of N nodes, each its own `gse-server run` process
    /// with its config and data in DIR/node-<i>/; every agent lists every
    /// node. More than one node needs --zookeeper and --redis. A node that
    /// dies is reported and the others keep running; `gse-server run -c
    /// DIR/node-<i>/server.toml` brings it back. Without --nodes,
    /// --zookeeper and --redis: one node in this process, on the embedded
    /// store.
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,
    /// ZooKeeper the nodes join ([cluster] zookeeper), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    zookeeper: Option<String>,
    /// Redis the nodes keep their state in ([store] redis),
    /// redis://[user:password@]HOST:PORT[/db].
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A cloud area behind a proxy, ID:K (repeatable): starts a gse-proxy
    /// for area ID (its certificate bound to the area) and K agents of
    /// that area whose only upstream is the proxy (identity IPs
    /// 127.(20+n).0.2 .. for the n-th area given). quickstart.json lists
    /// them under `proxies` and `agents`.
    #[arg(long = "cloud-area", value_name = "ID:K")]
    cloud_areas: Vec<AreaOption>,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Make a CA (unless DIR has one) and the server and shared agent
    /// certificates, each marked with its role (URI name gse://server,
    /// gse://agent): a server takes only agent certificates from agents, an
    /// agent only a server certificate from its server. Agents check the
    /// server certificate for the name in their upstream.server_name
    /// (default gse-server). Run again to re-issue them from the same CA
    /// (e.g. to replace certificates made before role marks).
    Init {
        /// Where to write gseca.crt/.key (the CA: keep the key on this
        /// host), gse_server.crt/.key (the server's) and gse_agent.crt/.key
        /// (every agent's, with gseca.crt).
        #[arg(long)]
        dir: PathBuf,
        /// Extra DNS name or IP for the server certificate (repeatable); it
        /// always carries gse-server, localhost and 127.0.0.1. Agents check
        /// it only if their upstream.server_name is set to it.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issue one more certificate from the CA in DIR. With --agent, a
    /// per-agent certificate: it can register only as that identity (and,
    /// with --agent-id, only with that agent id).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// What the certificate is for (default with --agent: agent).
        #[arg(long, value_enum, required_unless_present_any = ["agent", "proxy_area"])]
        kind: Option<KindArg>,
        /// The identity (cloud_id:ip) a per-agent certificate may claim,
        /// written into it as the URI name gse://agent/<cloud_id>/<ip>.
        #[arg(long, value_name = "CLOUD_ID:IP")]
        agent: Option<AgentKey>,
        /// The only agent id the per-agent certificate may register with.
        #[arg(long, requires = "agent")]
        agent_id: Option<String>,
        /// The one cloud area (bk_cloud_id, above 0) a proxy certificate
        /// may serve, written into it as gse://proxy/<cloud_id>; without
        /// it, a proxy certificate may serve any area.
        #[arg(long, value_name = "CLOUD_ID", conflicts_with = "agent")]
        proxy_area: Option<i64>,
        /// File name stem (default: gse_server, gse_agent, gse_proxy,
        /// gse_api_client; with --agent, gse_agent_<cloud_id>_<ip>; with
        /// --proxy-area, gse_proxy_<cloud_id>).
        #[arg(long)]
        name: Option<String>,
        /// Extra DNS name or IP the certificate carries (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: u32,
        /// Replace an existing certificate of that name.
        #[arg(long)]
        force: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum KindArg {
    Server,
    Agent,
    Proxy,
    ApiClient,
}

impl From<KindArg> for CertKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Server => CertKind::Server,
            KindArg::Agent => CertKind::Agent,
            KindArg::Proxy => CertKind::Proxy,
            KindArg::ApiClient => CertKind::ApiClient,
        }
    }
}

#[derive(Subcommand, Debug)]
enum AppsCommand {
    /// Register an app (or give it a new secret) in the node's state store.
    /// The store keeps only a salted hash: the secret is printed this once,
    /// note it now. A running node sees a new app at once; a changed secret
    /// after its restart.
    Add {
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
        /// The bk_app_code.
        #[arg(long)]
        code: String,
        /// The bk_app_secret; default: a new random one (128 bits).
        #[arg(long)]
        secret: Option<String>,
    },
    /// Print the hash of a secret for `app_secret_hash` in `[[api.apps]]`
    /// (a config that then holds no secret). Reads the secret from stdin;
    /// with `--new`, makes a random one and prints it too, this once.
    Hash {
        /// Make a new random secret instead of reading one from stdin.
        #[arg(long)]
        new: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AgentsCommand {
    /// List the identity pins: cloud_id:ip, agent id, since when, and
    /// whether a per-agent certificate made the pin.
    Pins {
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Release the pin of one identity and its agent id (a host re-installed
    /// with a new agent id, an identity IP moved to another host, or a host
    /// whose identity IP changed): the next agent to register with either
    /// is pinned. Safe while the server runs.
    ReleasePin {
        #[arg(short = 'c', long, env = "GSE_SERVER_CONFIG")]
        config: PathBuf,
        /// The identity, cloud_id:ip (e.g. 0:10.0.0.1).
        #[arg(long, value_name = "CLOUD_ID:IP")]
        agent: AgentKey,
    },
}

fn main() -> Result<()> {
    gse_core::tls::install_default_provider();
    let cli = Cli::parse();
    // Quickstart keeps the terminal for its summary; its log goes to DIR.
    let default_log = match &cli.command {
        Command::Quickstart(q) => {
            // Wrong flags are said before anything is made.
            ClusterOptions::from_flags(q.nodes, q.zookeeper.clone(), q.redis.clone())?;
            // Before the log file is opened there: DIR must be ours.
            quickstart::prepare_dir(&q.dir)?;
            Some(q.dir.join("server.log"))
        }
        _ => None,
    };
    cli.log
        .init(default_log.as_deref())
        .context("cannot open the log file")?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config: path } => run(ServerConfig::load(&path)?, &path).await,
        Command::Quickstart(q) => {
            raise_fd_limit();
            quickstart::run(QuickstartOptions {
                dir: q.dir,
                agents: q.agents,
                api_listen: q.api_listen,
                agent_listen: q.agent_listen,
                agent_bin: q.agent_bin,
                cluster: ClusterOptions::from_flags(q.nodes, q.zookeeper, q.redis)?,
                areas: q.cloud_areas,
            })
            .await
        }
        Command::Certs(c) => certs(c),
        Command::Apps(apps) => apps_command(apps).await,
        Command::Agents(c) => agents(c).await,
        Command::Enroll(c) => enroll(c),
        Command::Openapi => {
            print!("{}", gse_server::role::api::openapi::document_json());
            Ok(())
        }
        Command::CheckConfig { config: path } => {
            let config = ServerConfig::load(&path)?;
            print!("{}", config.redacted().to_toml());
            for exposed in config.exposures(&path) {
                eprintln!("warning: {exposed}");
            }
            for finding in reach::findings(&config) {
                match finding {
                    Reach::Warning(w) => eprintln!("warning: {w}"),
                    Reach::Note(n) => eprintln!("note: {n}"),
                }
            }
            Ok(())
        }
    }
}

async fn apps_command(command: AppsCommand) -> Result<()> {
    match command {
        AppsCommand::Add {
            config,
            code,
            secret,
        } => {
            let config = ServerConfig::load(&config)?;
            let secret = secret.unwrap_or_else(app_secret::generate);
            let (record, secret) = tokio::task::spawn_blocking(move || {
                (AppRecord::with_secret(code, &secret), secret)
            })
            .await?;
            let code = record.app_code.clone();
            let store = gse_server::store::open(&config).await?;
            store.put_app(record).await?;
            println!(
                "app {code} registered in {} (as a salted hash)",
                gse_server::store::location(&config)
            );
            println!("bk_app_secret: {secret}");
            println!("(shown this once: the server cannot show it again)");
            Ok(())
        }
        AppsCommand::Hash { new } => {
            let secret = if new {
                app_secret::generate()
            } else {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the secret from stdin")?;
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                anyhow::ensure!(
                    !line.is_empty(),
                    "no secret on stdin: pipe one in, or pass --new"
                );
                line
            };
            let hash = tokio::task::spawn_blocking({
                let secret = secret.clone();
                move || SecretHash::hash(&secret)
            })
            .await?;
            if new {
                println!("bk_app_secret: {secret}");
            }
            println!("app_secret_hash = \"{}\"", hash.as_str());
            Ok(())
        }
    }
}

async fn run(config: ServerConfig, path: &std::path::Path) -> Result<()> {
    raise_fd_limit();
    for exposed in config.exposures(path) {
        tracing::warn!("{exposed}");
    }
    for finding in reach::findings(&config) {
        match finding {
            Reach::Warning(w) => tracing::warn!("{w}"),
            Reach::Note(n) => tracing::info!("{n}"),
        }
    }
    let node = Node::start(config).await?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    node.stop(Duration::from_secs(10)).await;
    Ok(())
}

fn certs(c: CertsCommand) -> Result<()> {
    match c {
        CertsCommand::Init {
            dir,
            server_names,
            days,
        } => {
            let cd = CertDir::new(&dir);
            cd.init(&server_names, days)?;
            println!("certificates written to {}:", dir.display());
            for (kind, whose) in [
                (CertKind::Server, "the server host's (keep the key there)"),
                (CertKind::Agent, "every agent host's, beside gseca.crt"),
            ] {
                let p = cd.paths(kind, None);
                println!("  {} / {}: {whose}", p.cert.display(), p.key.display());
            }
            println!(
                "  CA: {} (keep {} secret)",
                cd.ca_cert().display(),
                cd.ca_key().display()
            );
        }
        CertsCommand::Issue {
            dir,
            kind,
            agent,
            agent_id,
            proxy_area,
            name,
            sans,
            days,
            force,
        } => {
            let cd = CertDir::new(&dir);
            if let Some(area) = proxy_area {
                if area <= 0 {
                    anyhow::bail!(
                        "--proxy-area {area}: a proxy serves a cloud area above 0 (area 0 is the servers' own)"
                    );
                }
                if !matches!(kind, None | Some(KindArg::Proxy)) {
                    anyhow::bail!("--proxy-area makes a proxy certificate; drop --kind {kind:?}");
                }
                let p = cd.issue_proxy(area, name.as_deref(), &sans, days, force)?;
                println!("issued {} / {}", p.cert.display(), p.key.display());
                return Ok(());
            }
            let p = match (agent, kind) {
                (Some(key), None | Some(KindArg::Agent)) => {
                    let identity = IdentityMark { key, agent_id };
                    cd.issue_agent(identity, name.as_deref(), &sans, days, force)?
                }
                (Some(_), Some(other)) => {
                    anyhow::bail!("--agent makes an agent certificate; drop --kind {other:?}")
                }
                (None, Some(kind)) => cd.issue(kind.into(), name.as_deref(), &sans, days, force)?,
                (None, None) => {
                    anyhow::bail!("give --kind, or --agent for a per-agent certificate")
                }
            };
            println!("issued {} / {}", p.cert.display(), p.key.display());
        }
    }
    Ok(())
}

async fn agents(c: AgentsCommand) -> Result<()> {
    let config = match &c {
        AgentsCommand::Pins { config } | AgentsCommand::ReleasePin { config, .. } => config,
    };
    let config = ServerConfig::load(config)?;
    let store = gse_server::store::open(&config).await?;
    match c {
        AgentsCommand::Pins { .. } => {
            let pins = store.list_identity_pins().await?;
            println!(
                "{:<40} {:<34} {:<21} per-agent certificate",
                "identity", "agent id", "pinned since"
            );
            for p in pins {
                let since = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(p.pinned_ms),
                );
                let by_cert = if p.by_certificate { "yes" } else { "no" };
                println!("{:<40} {:<34} {since:<21} {by_cert}", p.key, p.agent_id);
            }
        }
        AgentsCommand::ReleasePin { agent, .. } => match store.release_identity(agent).await? {
            Some(p) => println!(
                "released the pin of {agent} (agent id {0}); {agent} and agent id {0} are free: the next agent to register as {agent}, and the next registration with agent id {0}, are pinned",
                p.agent_id
            ),
            None => println!("{agent} is not pinned; nothing to release"),
        },
    }
    Ok(())
}

/// Lifts the soft open-files limit to the hard one: every agent holds a
/// socket, and the default soft limit (often 1024) is far too low.
fn raise_fd_limit() {
    if let Err(e) = gse_core::rlimit::raise_open_files() {
        tracing::warn!("{e}; fewer agents can connect");
    }
}

/// `gse-server enroll ...`.
fn enroll(cmd: EnrollCommand) -> anyhow::Result<()> {
    use gse_server::role::link::enroll::Tokens;
    let EnrollCommand::Token {
        config: path,
        ttl,
        cloud_id,
        ip,
        server,
    } = cmd;
    let config = ServerConfig::load(&path)?;
    if !config.enroll.enabled {
        anyhow::bail!(
            "{}: [enroll] enabled is false: agents could not use the token; enable it (with enroll.ca_key_file) and restart the node first",
            path.display()
        );
    }
    if ttl > config.enroll.max_ttl {
        anyhow::bail!(
            "--ttl {} is over enroll.max_ttl ({})",
            humantime::format_duration(ttl),
            humantime::format_duration(config.enroll.max_ttl)
        );
    }
    let ca_pem = std::fs::read_to_string(&config.tls.ca_file).with_context(|| {
        format!(
            "cannot read the CA certificate {}",
            config.tls.ca_file.display()
        )
    })?;
    let pin = gse_core::certs::ca_fingerprint(&ca_pem)
        .with_context(|| format!("{} holds no certificate", config.tls.ca_file.display()))?;
    let tokens = Tokens::new(config.enroll.tokens_path(&config.node.data_dir));
    let made = tokens
        .create(ttl, cloud_id, ip)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = server.unwrap_or_else(|| {
        let host = config
            .node
            .advertise_ip
            .map(|ip| ip.to_string())
            .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", config.link.listen.port())
    });
    println!(
        "token good once, until {} (unix ms {})",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(made.expires_ms)
        ),
        made.expires_ms
    );
    println!(
        "on the agent host, as root:\n  gse-agent join --server {server} --token {} --ca-sha256 {pin}",
        made.token
    );
    Ok(())
}

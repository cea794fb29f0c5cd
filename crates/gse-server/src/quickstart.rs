//! `gse-server quickstart`: a complete single-node platform in one command.
//!
//! Makes DIR, a CA with server and agent certificates (kept across runs),
//! starts a node with every role on the embedded store, registers an app for
//! the API, and starts N `gse-agent` child processes with identity IPs
//! 127.0.0.1 .. 127.0.0.N (cloud 0). When every agent has registered it
//! writes `DIR/quickstart.json` and prints the same in words. On SIGINT or
//! SIGTERM it stops the agents (SIGTERM, then SIGKILL after a grace period)
//! and then the node. The files it writes (`server.toml`, agent configs) are
//! ordinary configs: `gse-server run` / `gse-agent` run them the same way.
//! DIR is 0700 and every file in it that holds a secret or names one
//! (quickstart.json, the configs, keys, the store) is 0600 from creation;
//! each run gives the app a new secret (the store keeps only its hash).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_agent::AgentConfig;
use gse_core::app_secret;
use gse_core::certs::{CertDir, CertKind, DEFAULT_CA_DAYS};
use gse_core::private_files;
use gse_core::seams::{AppRecord, StateStore};
use gse_core::tls::TlsFiles;
use gse_core::{AgentKey, AgentRef};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::config::ServerConfig;
use crate::node::Node;

/// App code quickstart registers for API calls.
pub const APP_CODE: &str = "gse-quickstart";
/// Most agents quickstart starts (identity IPs stay inside 127.0.0.0/8).
pub const MAX_AGENTS: u32 = 1000;
const REGISTER_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct QuickstartOptions {
    pub dir: PathBuf,
    pub agents: u32,
    pub api_listen: SocketAddr,
    pub agent_listen: SocketAddr,
    /// The gse-agent binary; default: next to this executable.
    pub agent_bin: Option<PathBuf>,
}

/// `DIR/quickstart.json`.
#[derive(Clone, Debug, Serialize)]
pub struct QuickstartInfo {
    pub api: String,
    pub agent_listen: String,
    pub bk_app_code: String,
    pub bk_app_secret: String,
    pub alarm_log: PathBuf,
    pub server_pid: u32,
    pub agents: Vec<AgentInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    pub bk_agent_id: String,
    pub ip: String,
    pub bk_cloud_id: i64,
    pub pid: u32,
    /// The agent's local data socket (D1): collectors and `gse-agent send
    /// --socket` write here.
    pub data_ipc: PathBuf,
}

/// A `gse-agent` child process started on this host (quickstart, benches).
pub struct LocalAgent {
    pub ip: IpAddr,
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// Its local data socket (D1).
    pub data_ipc: PathBuf,
}

/// Identity IP of the i-th agent (1-based): 127.0.0.i, continuing into
/// 127.0.1.x beyond 255.
pub fn agent_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + i))
}

/// Runs the whole quickstart until a signal; see the module doc.
pub async fn run(opts: QuickstartOptions) -> Result<()> {
    if opts.agents == 0 || opts.agents > MAX_AGENTS {
        bail!(
            "--agents {} is out of range: give 1..={MAX_AGENTS}",
            opts.agents
        );
    }
    prepare_dir(&opts.dir)?;
    let dir = opts.dir.canonicalize()?;
    let info_path = dir.join("quickstart.json");
    let _ = std::fs::remove_file(&info_path);
    let agent_bin = find_agent_bin(opts.agent_bin.as_deref())?;
    let certs = ensure_certs(&dir.join("certs"))?;

    let config = server_config(&dir, &certs, &opts);
    private_files::write_private(&dir.join("server.toml"), config.to_toml().as_bytes())?;
    let node = Node::start(config).await?;
    let api = node.api_addr.context("quickstart runs the api role")?;
    let agent_addr = node.agent_addr.context("quickstart runs the link role")?;
    let secret = ensure_app(node.store.as_ref()).await?;

    let agent_tls = tls_files(&certs, CertKind::Agent);
    let mut agents = Vec::new();
    for i in 1..=opts.agents {
        agents.push(spawn_local_agent(
            &agent_bin,
            &dir,
            agent_addr,
            &agent_tls,
            agent_ip(i),
        )?);
    }
    let result = async {
        let registered = wait_registered(node.store.as_ref(), &mut agents).await?;
        let info = QuickstartInfo {
            api: format!("http://{api}"),
            agent_listen: agent_addr.to_string(),
            bk_app_code: APP_CODE.into(),
            bk_app_secret: secret,
            alarm_log: node.config.alarm.log_file.clone().unwrap_or_default(),
            server_pid: std::process::id(),
            agents: registered,
        };
        private_files::write_private(&info_path, &serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("cannot write {}", info_path.display()))?;
        print_summary(&info, &dir);
        wait_for_signal().await;
        anyhow::Ok(())
    }
    .await;

    println!("stopping {} agent(s) and the server ...", agents.len());
    stop_local_agents(&mut agents).await;
    node.stop(STOP_GRACE).await;
    let _ = std::fs::remove_file(&info_path);
    result
}

/// Makes quickstart's DIR private (0700: it holds quickstart.json with the
/// app secret, keys and the store), or refuses a DIR another user owns or
/// could swap. Call it before anything is written there, the log included.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    let closed = private_files::make_private_dir(dir)
        .with_context(|| format!("cannot use {} as quickstart's directory", dir.display()))?;
    if let Some(mode) = closed {
        println!(
            "{} was open to other users (mode {mode:04o}); closed it (0700)",
            dir.display()
        );
    }
    Ok(())
}

fn find_agent_bin(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("gse-agent"),
    };
    if !path.is_file() {
        bail!(
            "cannot find the gse-agent binary at {}; build it (cargo build --release --bins) or pass --agent-bin",
            path.display()
        );
    }
    Ok(path)
}

/// Makes the CA and certificates on first run; reuses them afterwards.
fn ensure_certs(dir: &Path) -> Result<CertDir> {
    let certs = CertDir::new(dir);
    if !certs.ca_cert().exists() {
        certs
            .init(&[], DEFAULT_CA_DAYS)
            .context("cannot make the quickstart certificates")?;
    }
    Ok(certs)
}

fn tls_files(certs: &CertDir, kind: CertKind) -> TlsFiles {
    certs.tls_files(kind)
}

fn server_config(dir: &Path, certs: &CertDir, opts: &QuickstartOptions) -> ServerConfig {
    let mut config =
        ServerConfig::with_defaults(dir.join("server"), tls_files(certs, CertKind::Server));
    config.node.id = "quickstart".into();
    config.api.listen = opts.api_listen;
    config.link.listen = opts.agent_listen;
    // A free port: agents learn their DataServer from the link (D4).
    config.data.listen = vec![SocketAddr::new(opts.agent_listen.ip(), 0)];
    config.alarm.log_file = Some(dir.join("alarms.jsonl"));
    config.resolve();
    config
}

/// A new secret for the quickstart app, each run: the store keeps only its
/// hash, so an earlier run's secret cannot be read back (quickstart.json,
/// 0600, has the current one).
async fn ensure_app(store: &dyn StateStore) -> Result<String> {
    let secret = app_secret::generate();
    let record = tokio::task::spawn_blocking({
        let secret = secret.clone();
        move || AppRecord::with_secret(APP_CODE, &secret)
    })
    .await?;
    store.put_app(record).await?;
    Ok(secret)
}

/// Starts `bin` as an agent with identity IP `ip` (also its source
/// address), connecting to `server`; its config, data and log go under
/// `dir/agents/<ip>/`.
pub fn spawn_local_agent(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    tls: &TlsFiles,
    ip: IpAddr,
) -> Result<LocalAgent> {
    spawn_local_agent_with(bin, dir, server, tls, ip, |_| {})
}

/// Like [`spawn_local_agent`], with `customize` applied to the agent's
/// config before it is written (benches set the `[file]` section: P2P
/// listener, upload caps).
pub fn spawn_local_agent_with(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    tls: &TlsFiles,
    ip: IpAddr,
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<LocalAgent> {
    let home = dir.join("agents").join(ip.to_string());
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let mut cfg = AgentConfig::new(home.join("data"), vec![server.to_string()], tls.clone());
    cfg.agent.identity_ip = Some(ip);
    cfg.upstream.bind_ip = Some(ip);
    // Several local agents share one host: each serves peers on its own
    // address and a free port (it advertises the bound port).
    cfg.file.p2p_listen = Some(SocketAddr::new(ip, 0));
    customize(&mut cfg);
    let data_ipc = cfg.data.ipc_path(&cfg.agent.data_dir);
    let cfg_path = home.join("agent.toml");
    private_files::write_private(&cfg_path, cfg.to_toml().as_bytes())
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let log = home.join("agent.log");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&cfg_path)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(LocalAgent {
        ip,
        child,
        log,
        data_ipc,
    })
}

/// Waits until every agent is registered and alive; fails early if one exits.
async fn wait_registered(
    store: &dyn StateStore,
    agents: &mut [LocalAgent],
) -> Result<Vec<AgentInfo>> {
    let refs: Vec<AgentRef> = agents
        .iter()
        .map(|a| AgentRef::Key(AgentKey::new(0, a.ip)))
        .collect();
    let deadline = tokio::time::Instant::now() + REGISTER_DEADLINE;
    loop {
        for a in agents.iter_mut() {
            if let Some(status) = a.child.try_wait()? {
                bail!(
                    "agent {} exited ({status}) before registering; its log {} ends with:\n{}",
                    a.ip,
                    a.log.display(),
                    tail(&a.log, 10)
                );
            }
        }
        let records = store.get_agents(&refs).await?;
        if records.iter().all(|r| r.as_ref().is_some_and(|r| r.alive)) {
            return Ok(records
                .into_iter()
                .flatten()
                .zip(agents.iter())
                .map(|(r, a)| AgentInfo {
                    bk_agent_id: r.agent_id,
                    ip: r.key.ip.to_string(),
                    bk_cloud_id: r.key.cloud_id,
                    pid: a.child.id().unwrap_or(0),
                    data_ipc: a.data_ipc.clone(),
                })
                .collect());
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<String> = agents
                .iter()
                .zip(records.iter())
                .filter(|(_, r)| !r.as_ref().is_some_and(|r| r.alive))
                .map(|(a, _)| format!("{} (log {})", a.ip, a.log.display()))
                .collect();
            bail!(
                "agents not registered after {REGISTER_DEADLINE:?}: {}",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_summary(info: &QuickstartInfo, dir: &Path) {
    println!(
        "gse quickstart is running (server pid {}).",
        info.server_pid
    );
    println!("  API:            {}", info.api);
    println!(
        "  agent link:     {} (mutual TLS, certificates in {})",
        info.agent_listen,
        dir.join("certs").display()
    );
    println!(
        "  app:            bk_app_code={} bk_app_secret={}",
        info.bk_app_code, info.bk_app_secret
    );
    println!("  alarm log:      {}", info.alarm_log.display());
    println!("  agents ({}):", info.agents.len());
    for a in &info.agents {
        println!(
            "    {}:{}  agent_id {}  pid {}  data socket {}",
            a.bk_cloud_id,
            a.ip,
            a.bk_agent_id,
            a.pid,
            a.data_ipc.display()
        );
    }
    println!(
        "  details:        {}",
        dir.join("quickstart.json").display()
    );
    println!();
    println!("Try:");
    println!("  gsectl --quickstart {} agents", dir.display());
    println!(
        "  curl -s -X POST {}/api/c/compapi/v2/gse/get_agent_status/ -H 'Content-Type: application/json' \\\n    -d '{{\"bk_app_code\":\"{}\",\"bk_app_secret\":\"{}\",\"bk_supplier_account\":\"0\",\"hosts\":[{{\"ip\":\"{}\",\"bk_cloud_id\":0}}]}}'",
        info.api,
        info.bk_app_code,
        info.bk_app_secret,
        info.agents
            .first()
            .map(|a| a.ip.as_str())
            .unwrap_or("127.0.0.1")
    );
    println!();
    println!("Press Ctrl-C to stop.");
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// SIGTERM every agent, then SIGKILL those still running after the grace.
pub async fn stop_local_agents(agents: &mut [LocalAgent]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for a in agents.iter() {
        if let Some(pid) = a.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for a in agents.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, a.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(agent = %a.ip, "agent did not stop within {STOP_GRACE:?}; killing it");
            let _ = a.child.kill().await;
        }
    }
}

//! `gse-server quickstart`: a complete platform in one command.
//!
//! Makes DIR, a CA with server and agent certificates (kept across runs),
//! has the caller start the node(s) ([`QuickstartNode`]): by default one
//! node with every role on the embedded store, in this process; with
//! [`ClusterOptions`] (`--nodes N --zookeeper --redis`) N `gse-server run`
//! processes joined through ZooKeeper and sharing Redis ([`cluster`]).
//! It registers an app for the API, and starts K `gse-agent` child
//! processes with identity IPs 127.0.0.1 .. 127.0.0.K (cloud 0), each
//! listing every node's agent address. When every agent has registered it writes
//! `DIR/quickstart.json` and prints the same in words. On SIGINT or SIGTERM
//! it stops the agents (SIGTERM, then SIGKILL after a grace period) and then
//! the node. The files it writes (`server.toml`, agent configs) are
//! ordinary configs: `gse-server run` / `gse-agent` run them the same way.
//! A cluster node that exits is reported (with the `gse-server run -c`
//! that brings it back) while the rest keep running. Each `--cloud-area
//! ID:K` adds a `gse-proxy` process for area ID and K agents behind it
//! ([`areas`]).
//! DIR is 0700 and every file in it that holds a secret or names one
//! (quickstart.json, the configs, keys, the store) is 0600 from creation;
//! each run gives the app a new secret (the store keeps only its hash).

pub mod areas;
pub mod cluster;
mod summary;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::app_secret;
use gse_core::certs::{CertDir, CertKind, DEFAULT_CA_DAYS};
use gse_core::private_files;
use gse_core::seams::{AppRecord, StateStore};
use gse_core::tls::TlsFiles;
use gse_core::{AgentKey, AgentRef};
use serde::Serialize;

pub use self::areas::{AreaOption, ProxyEntry};
pub use self::cluster::{ClusterOptions, NodeEntry, NodeExit};
use crate::agent::{
    LocalAgent, MAX_AGENTS, agent_ip, spawn_local_agent, spawn_local_agent_with, stop_local_agents,
};

/// App code quickstart registers for API calls.
pub const APP_CODE: &str = "gse-quickstart";
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
    /// Several nodes on ZooKeeper and Redis; None: one embedded node.
    pub cluster: Option<ClusterOptions>,
    /// Cloud areas, each with a proxy and agents behind it (issue 12).
    pub areas: Vec<AreaOption>,
}

/// What the node starter is given: where quickstart keeps its files and
/// which addresses the user asked for.
pub struct NodeSetup {
    /// DIR, canonical and private (0700).
    pub dir: PathBuf,
    /// The server's certificate and key and the CA, under `DIR/certs`.
    pub server_tls: TlsFiles,
    /// The first node's addresses (the others' are derived from them).
    pub api_listen: SocketAddr,
    pub agent_listen: SocketAddr,
    /// Start these cluster nodes as processes instead of one embedded node.
    pub cluster: Option<ClusterOptions>,
}

/// The node(s) quickstart runs, as the caller (gse-server) started it.
pub trait QuickstartNode {
    /// Every node, the first one first (its API is quickstart.json's `api`).
    fn nodes(&self) -> Vec<NodeEntry>;
    /// Every node's agent address, in the order of [`Self::nodes`]: what
    /// each agent lists.
    fn agent_addrs(&self) -> Vec<SocketAddr>;
    /// The (shared) state store: quickstart registers its app there and
    /// watches the agents register.
    fn store(&self) -> &dyn StateStore;
    /// Where the first node writes alarms.
    fn alarm_log(&self) -> PathBuf;
    /// Resolves when a node process exits (each reported once); never for
    /// a node running in this process.
    fn next_exit(&mut self) -> impl Future<Output = NodeExit>;
    /// Stops the node(s), giving their work `grace` to finish.
    fn stop(self, grace: Duration) -> impl Future<Output = ()>;
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
    /// Every node (one for the embedded quickstart); `api` and
    /// `agent_listen` above are the first one's.
    pub nodes: Vec<NodeEntry>,
    /// One per `--cloud-area`: the area's proxy.
    pub proxies: Vec<ProxyEntry>,
    /// Every agent, those behind proxies too (with their `bk_cloud_id`).
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

/// Runs the whole quickstart until a signal; see the module doc.
/// `start_node` starts the node (in this process) from the setup.
pub async fn run<N, F, Fut>(opts: QuickstartOptions, start_node: F) -> Result<()>
where
    N: QuickstartNode,
    F: FnOnce(NodeSetup) -> Fut,
    Fut: Future<Output = Result<N>>,
{
    if opts.agents == 0 || opts.agents > MAX_AGENTS {
        bail!(
            "--agents {} is out of range: give 1..={MAX_AGENTS}",
            opts.agents
        );
    }
    areas::check(&opts.areas)?;
    prepare_dir(&opts.dir)?;
    let dir = opts.dir.canonicalize()?;
    let proxy_bin = match opts.areas.is_empty() {
        true => None,
        false => Some(areas::find_proxy_bin()?),
    };
    let info_path = dir.join("quickstart.json");
    let _ = std::fs::remove_file(&info_path);
    let agent_bin = find_agent_bin(opts.agent_bin.as_deref())?;
    let certs = ensure_certs(&dir.join("certs"))?;

    let mut node = start_node(NodeSetup {
        dir: dir.clone(),
        server_tls: certs.tls_files(CertKind::Server),
        api_listen: opts.api_listen,
        agent_listen: opts.agent_listen,
        cluster: opts.cluster.clone(),
    })
    .await?;
    let nodes = node.nodes();
    let agent_addrs = node.agent_addrs();

    let mut proxies = Vec::new();
    let result = async {
        let secret = ensure_app(node.store()).await?;
        let agent_tls = certs.tls_files(CertKind::Agent);
        let mut agents = Vec::new();
        for i in 1..=opts.agents {
            agents.push(spawn_local_agent(
                &agent_bin,
                &dir,
                &agent_addrs,
                &agent_tls,
                agent_ip(i),
            )?);
        }
        for (index, area) in opts.areas.iter().enumerate() {
            let bin = proxy_bin.as_deref().context("no gse-proxy binary")?;
            let proxy = areas::start_proxy(bin, (&dir, &certs), (area, index), &agent_addrs)?;
            for j in 1..=area.agents {
                agents.push(spawn_local_agent_with(
                    &agent_bin,
                    &dir,
                    &[proxy.listen],
                    &agent_tls,
                    areas::area_agent_ip(index, j),
                    |cfg| {
                        // Behind its area's proxy, which it takes as its
                        // server by the proxy certificate's name.
                        cfg.agent.cloud_id = area.bk_cloud_id;
                        cfg.upstream.server_name = "gse-proxy".into();
                    },
                )?);
            }
            proxies.push(proxy);
        }
        let shown = async {
            let registered = wait_registered(node.store(), &mut agents, &mut proxies).await?;
            let first = nodes.first().context("quickstart started no node")?;
            let info = QuickstartInfo {
                api: first.api.clone(),
                agent_listen: first.agent_listen.clone(),
                bk_app_code: APP_CODE.into(),
                bk_app_secret: secret,
                alarm_log: node.alarm_log(),
                server_pid: std::process::id(),
                nodes: nodes.clone(),
                proxies: proxies.iter().map(|p| p.entry.clone()).collect(),
                agents: registered,
            };
            private_files::write_private(&info_path, &serde_json::to_vec_pretty(&info)?)
                .with_context(|| format!("cannot write {}", info_path.display()))?;
            summary::print(&info, &dir);
            watch_until_signal(&mut node).await;
            anyhow::Ok(())
        }
        .await;
        println!(
            "stopping {} agent(s) and {} ...",
            agents.len(),
            match nodes.len() {
                1 => "the server".to_string(),
                n => format!("{n} nodes"),
            }
        );
        stop_local_agents(&mut agents).await;
        areas::stop_proxies(&mut proxies, STOP_GRACE).await;
        shown
    }
    .await;
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

/// Waits until every agent is registered and alive; fails early if one exits.
async fn wait_registered(
    store: &dyn StateStore,
    agents: &mut [LocalAgent],
    proxies: &mut [areas::LocalProxy],
) -> Result<Vec<AgentInfo>> {
    let refs: Vec<AgentRef> = agents
        .iter()
        .map(|a| AgentRef::Key(AgentKey::new(a.cloud_id, a.ip)))
        .collect();
    let deadline = tokio::time::Instant::now() + REGISTER_DEADLINE;
    loop {
        areas::check_running(proxies)?;
        for a in agents.iter_mut() {
            if let Some(status) = a.child.try_wait()? {
                bail!(
                    "agent {} exited ({status}) before registering; its log {} ends with:\n{}",
                    a.ip,
                    a.log.display(),
                    crate::log_tail(&a.log, 10)
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
                .map(|(a, _)| format!("{}:{} (log {})", a.cloud_id, a.ip, a.log.display()))
                .collect();
            bail!(
                "agents not registered after {REGISTER_DEADLINE:?}: {}",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until SIGINT or SIGTERM: reports every node process that exits (on the
/// terminal and in the log) and keeps the rest running.
async fn watch_until_signal(node: &mut impl QuickstartNode) {
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let server_bin = std::env::current_exe().unwrap_or_else(|_| "gse-server".into());
    loop {
        tokio::select! {
            _ = &mut signal => return,
            exit = node.next_exit() => {
                let message = exit.message(&server_bin);
                tracing::warn!(node = %exit.node_id, pid = exit.pid, "{message}");
                println!("{message}");
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

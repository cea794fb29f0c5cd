//! A real `gse-server` child process for a bench, in its own temp dir.
//!
//! [`BenchServer::start`] makes certificates, writes `server.toml` with free
//! loopback ports (and the API apps and host limit of [`ServerOptions`]),
//! and starts the built binary on it with `gse_launch::server` (ready once
//! `GET /healthz` answers 200). [`BenchServer::stop`] sends SIGTERM and
//! kills after a grace period. The dir holds `server.log` and
//! `server.out`; it is kept, and its path printed, when a bench fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::certs::{CertDir, CertKind};
use gse_core::tls::TlsFiles;
use gse_launch::beside_current_exe;
use gse_launch::server::ServerProcess;
use gse_server::config::ServerConfig;
use gse_server::role::api::AppConfig;
/// How long the server has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What the server is started with.
#[derive(Clone)]
pub struct ServerOptions {
    /// The `gse-server` binary; default: beside the current executable.
    pub bin: Option<PathBuf>,
    /// `link.heartbeat_interval`; the timeout is three times it.
    pub heartbeat_interval: Duration,
    /// `api.max_hosts_per_call`; `None` = the server's default.
    pub max_hosts_per_call: Option<usize>,
    /// `api.apps`: who may call the API.
    pub apps: Vec<AppConfig>,
    /// Membership of a cluster; `None`: an embedded single node.
    pub cluster: Option<ClusterMember>,
}

/// How one node of a bench cluster is configured.
#[derive(Clone)]
pub struct ClusterMember {
    /// `node.id`, distinct per node.
    pub node_id: String,
    /// `[cluster] zookeeper`, `host:port`.
    pub zookeeper: String,
    /// `[store] redis`.
    pub redis: String,
    /// An already initialised cert dir (the first node's) whose server
    /// certificate this node uses too, so the nodes' links trust each
    /// other; `None`: make new certificates.
    pub certs: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bin: None,
            heartbeat_interval: Duration::from_secs(5),
            max_hosts_per_call: None,
            apps: Vec::new(),
            cluster: None,
        }
    }
}

/// A running `gse-server` and the files it uses.
pub struct BenchServer {
    dir: tempfile::TempDir,
    process: ServerProcess,
    /// Where agents connect.
    pub link: SocketAddr,
    /// Where the HTTP API listens.
    pub api: SocketAddr,
    /// Agent-side TLS material, signed by the server's CA.
    pub agent_tls: TlsFiles,
    certs: PathBuf,
}

impl BenchServer {
    pub async fn start(opts: &ServerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gse-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let (config, agent_tls, certs) = write_files(dir.path(), opts)?;
        let bin = match &opts.bin {
            Some(bin) => bin.clone(),
            None => beside_current_exe("gse-server")?,
        };
        let started = ServerProcess::start(
            &bin,
            &dir.path().join("server.toml"),
            dir.path(),
            config.api.listen,
        )
        .await;
        let process = match started {
            Ok(p) => p,
            Err(e) => {
                let kept = dir.keep();
                return Err(e.context(format!("see the server's logs in {}", kept.display())));
            }
        };
        Ok(BenchServer {
            dir,
            process,
            link: config.link.listen,
            api: config.api.listen,
            agent_tls,
            certs,
        })
    }

    /// The server's pid, as `/proc` names it.
    pub fn proc_id(&self) -> String {
        self.process.pid().to_string()
    }

    /// The certificates this server uses (made in its temp dir, or shared).
    pub fn certs_dir(&self) -> PathBuf {
        self.certs.clone()
    }

    /// The bench's temp dir (kept on failure): a place for other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server: SIGTERM, then SIGKILL after the grace period.
    pub async fn stop(&mut self) {
        if self.process.stop(STOP_GRACE).await {
            eprintln!("gse-server did not stop within {STOP_GRACE:?} of SIGTERM; killed it");
        }
    }

    /// SIGKILL, as a crashed node: no goodbye to its agents or the cluster.
    /// Returns once the process is reaped.
    pub async fn kill(&mut self) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.process.pid() as i32), Signal::SIGKILL)
            .context("cannot SIGKILL gse-server")?;
        // Already dead: this only reaps it.
        self.process.stop(Duration::from_secs(5)).await;
        Ok(())
    }

    /// Keeps the temp dir (for a failed run) and returns its path.
    pub fn keep_dir(self) -> PathBuf {
        self.dir.keep()
    }

    /// The end of every bench run: stops the server (saying how long it
    /// took), keeps the files when asked or when the run was not clean, and
    /// turns the report into the bench's output line.
    pub async fn finish<R: serde::Serialize>(
        self,
        result: Result<(R, Option<String>)>,
        keep: bool,
    ) -> Result<crate::BenchOutput> {
        let (report, failure) = self.close(result, keep).await?;
        Ok(crate::BenchOutput {
            line: serde_json::to_string(&report)?,
            failure,
        })
    }

    /// [`Self::finish`] without the serialising: stops the server, keeps
    /// the files when asked or when the run was not clean.
    pub async fn close<R>(
        mut self,
        result: Result<(R, Option<String>)>,
        keep: bool,
    ) -> Result<(R, Option<String>)> {
        let stopping = std::time::Instant::now();
        self.stop().await;
        eprintln!(
            "gse-server stopped in {:.1}s",
            stopping.elapsed().as_secs_f64()
        );
        let failed = !matches!(&result, Ok((_, None)));
        if keep || failed {
            eprintln!("bench files kept in {}", self.keep_dir().display());
        }
        result
    }
}

/// Certificates and `server.toml` in `dir`; returns the resolved config,
/// the agents' TLS files and the cert dir.
fn write_files(dir: &Path, opts: &ServerOptions) -> Result<(ServerConfig, TlsFiles, PathBuf)> {
    let shared = opts.cluster.as_ref().and_then(|m| m.certs.clone());
    let certs_path = shared.clone().unwrap_or_else(|| dir.join("certs"));
    let certs = CertDir::new(&certs_path);
    if shared.is_none() {
        certs.init(&[], 3650).context("cannot make certificates")?;
    }
    let tls = |kind| certs.tls_files(kind);
    let mut config = ServerConfig::with_defaults(dir.join("data"), tls(CertKind::Server));
    config.api.listen = free_port()?;
    config.link.listen = free_port()?;
    config.data.listen = vec![free_port()?];
    config.node.id = "bench".into();
    config.link.heartbeat_interval = opts.heartbeat_interval;
    config.link.heartbeat_timeout = opts.heartbeat_interval * 3;
    if let Some(max) = opts.max_hosts_per_call {
        config.api.max_hosts_per_call = max;
    }
    config.api.apps = opts.apps.clone();
    if let Some(member) = &opts.cluster {
        config.node.id = member.node_id.clone();
        config.cluster.zookeeper = vec![member.zookeeper.clone()];
        // Every node its own port, told to the others as bound.
        config.cluster.node_listen = "127.0.0.1:0".parse()?;
        config.store.redis = Some(member.redis.clone());
        // The bench places its simulated agents itself (agent i on node
        // i % N), and they do not follow a hand-over: K2 would only move
        // some of them away mid-run.
        config.cluster.balance = false;
    }
    config.resolve();
    if let Err(problems) = config.validate() {
        bail!(
            "the bench's server config is not valid: {}",
            problems.join("; ")
        );
    }
    let path = dir.join("server.toml");
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((config, tls(CertKind::Agent), certs_path))
}

/// A loopback address whose port was free a moment ago.
pub fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?)
}

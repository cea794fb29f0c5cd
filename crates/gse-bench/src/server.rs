//! A real `gse-server` child process for a bench, in its own temp dir.
//!
//! [`BenchServer::start`] makes certificates, writes `server.toml` with free
//! loopback ports (and the API apps and host limit of [`ServerOptions`]),
//! spawns the built binary and waits (polling with a deadline) until
//! `GET /healthz` answers 200. [`BenchServer::stop`] sends
//! SIGTERM and kills after a grace period. The dir holds `server.log` and
//! `server.out`; it is kept, and its path printed, when a bench fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::certs::{CertDir, CertKind};
use gse_core::tls::TlsFiles;
use gse_server::config::ServerConfig;
use gse_server::role::api::AppConfig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long the server has to answer `/healthz` after it is spawned.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long the server has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What the server is started with.
pub struct ServerOptions {
    /// The `gse-server` binary; default: beside the current executable.
    pub bin: Option<PathBuf>,
    /// `link.heartbeat_interval`; the timeout is three times it.
    pub heartbeat_interval: Duration,
    /// `api.max_hosts_per_call`; `None` = the server's default.
    pub max_hosts_per_call: Option<usize>,
    /// `api.apps`: who may call the API.
    pub apps: Vec<AppConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bin: None,
            heartbeat_interval: Duration::from_secs(5),
            max_hosts_per_call: None,
            apps: Vec::new(),
        }
    }
}

/// A running `gse-server` and the files it uses.
pub struct BenchServer {
    dir: tempfile::TempDir,
    child: Child,
    pid: u32,
    /// Where agents connect.
    pub link: SocketAddr,
    /// Where the HTTP API listens.
    pub api: SocketAddr,
    /// Agent-side TLS material, signed by the server's CA.
    pub agent_tls: TlsFiles,
}

impl BenchServer {
    pub async fn start(opts: &ServerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gse-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let (config, agent_tls) = write_files(dir.path(), opts)?;
        let bin = match &opts.bin {
            Some(bin) => bin.clone(),
            None => beside_current_exe("gse-server")?,
        };
        let child = spawn(&bin, dir.path())?;
        let pid = child.id().context("gse-server exited at once")?;
        let mut server = BenchServer {
            dir,
            child,
            pid,
            link: config.link.listen,
            api: config.api.listen,
            agent_tls,
        };
        if let Err(e) = server.wait_ready(config.api.listen).await {
            server.stop().await;
            let kept = server.keep_dir();
            return Err(e.context(format!("see the server's logs in {}", kept.display())));
        }
        Ok(server)
    }

    /// The server's pid, as `/proc` names it.
    pub fn proc_id(&self) -> String {
        self.pid.to_string()
    }

    /// The bench's temp dir (kept on failure): a place for other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server: SIGTERM, then SIGKILL after the grace period.
    pub async fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            eprintln!("gse-server did not stop within {STOP_GRACE:?} of SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Keeps the temp dir (for a failed run) and returns its path.
    pub fn keep_dir(self) -> PathBuf {
        self.dir.keep()
    }

    /// The end of every bench run: stops the server (saying how long it
    /// took), keeps the files when asked or when the run was not clean, and
    /// turns the report into the bench's output line.
    pub async fn finish<R: serde::Serialize>(
        mut self,
        result: Result<(R, Option<String>)>,
        keep: bool,
    ) -> Result<crate::BenchOutput> {
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
        let (report, failure) = result?;
        Ok(crate::BenchOutput {
            line: serde_json::to_string(&report)?,
            failure,
        })
    }

    async fn wait_ready(&mut self, api: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("gse-server exited before it was ready ({status})");
            }
            if healthz(api).await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("gse-server did not answer GET http://{api}/healthz within {READY_WITHIN:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Certificates and `server.toml` in `dir`; returns the resolved config and
/// the agents' TLS files.
fn write_files(dir: &Path, opts: &ServerOptions) -> Result<(ServerConfig, TlsFiles)> {
    let certs = CertDir::new(dir.join("certs"));
    certs.init(&[], 3650).context("cannot make certificates")?;
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
    Ok((config, tls(CertKind::Agent)))
}

/// A loopback address whose port was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?)
}

/// The built binary `name` in the directory of this executable.
pub fn beside_current_exe(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let bin = exe.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} not found; build it (cargo build --release -p {name})",
            bin.display()
        );
    }
    Ok(bin)
}

fn spawn(bin: &Path, dir: &Path) -> Result<Child> {
    let out = std::fs::File::create(dir.join("server.out"))?;
    Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(dir.join("server.toml"))
        .arg("--log-file")
        .arg(dir.join("server.log"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// True if `GET /healthz` answers 200 (HTTP/1.0 over a raw socket).
async fn healthz(api: SocketAddr) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(api).await?;
    tcp.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    timeout(Duration::from_secs(2), tcp.read_to_end(&mut answer)).await??;
    let status = answer.split(|&b| b == b' ').nth(1);
    Ok(status == Some(b"200".as_slice()))
}

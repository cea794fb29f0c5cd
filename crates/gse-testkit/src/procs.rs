//! Server and agent processes for tests.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gse_agent_config::AgentConfig;
use gse_core::certs::{CertDir, CertKind};
use gse_core::tls::TlsFiles;
use gse_launch::agent::local_config;
use gse_server::config::ServerConfig;
use gse_server::role::api::AppConfig;
use gse_server::role::file::PassThroughRule;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Api, bin, eventually, free_port};

/// App every test server knows.
pub const APP_CODE: &str = "test-app";
pub const APP_SECRET: &str = "test-secret";

/// A test's directory and certificate set. On a failing test the directory
/// is kept and its path printed, with the tail of every log in it.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub certs: CertDir,
}

impl Cluster {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gse-it-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let certs = CertDir::new(path.join("certs"));
        certs.init(&[], 30).expect("test certificates");
        // Not made by init; the tests that a wrong role is refused use it.
        certs
            .issue(CertKind::ApiClient, None, &[], 30, false)
            .expect("an API-client certificate");
        certs
            .issue(CertKind::Proxy, None, &[], 30, false)
            .expect("a proxy certificate");
        Cluster {
            dir: Some(dir),
            path,
            certs,
        }
    }

    /// TLS files of the given kind from this cluster's CA.
    pub fn tls(&self, kind: CertKind) -> TlsFiles {
        tls_of(&self.certs, kind)
    }

    /// A second, unrelated CA with its own certificates (for mismatch tests).
    pub fn foreign_certs(&self) -> CertDir {
        let certs = CertDir::new(self.path.join("foreign-certs"));
        certs.init(&[], 30).expect("foreign certificates");
        certs
    }

    pub async fn server(&self, opts: ServerOptions) -> ServerProc {
        ServerProc::start(self, opts).await
    }

    pub fn agent(&self, server: &ServerProc, opts: AgentOptions) -> AgentProc {
        AgentProc::start(self, &[server.link_addr], opts)
    }

    /// An agent that lists every one of `servers` (the nodes of a cluster).
    pub fn agent_of(&self, servers: &[SocketAddr], opts: AgentOptions) -> AgentProc {
        AgentProc::start(self, servers, opts)
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!(
                "test failed; its processes' files are kept in {}",
                path.display()
            );
            print_log_tails(&path);
        }
    }
}

fn print_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            print_log_tails(&p);
        } else if p.extension().is_some_and(|e| e == "log") {
            let lines = crate::read_lines(&p);
            eprintln!("--- {} (last 15 lines)", p.display());
            for l in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("{l}");
            }
        }
    }
}

pub fn tls_of(certs: &CertDir, kind: CertKind) -> TlsFiles {
    certs.tls_files(kind)
}

/// Knobs of a test server; the defaults make liveness fast to observe.
#[derive(Clone)]
pub struct ServerOptions {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub lost_grace: Duration,
    pub webhook: Option<String>,
    /// `[[file.pass_through]]` pairs (from_zone, to_zone) allowed for every app.
    pub file_pass_through: Vec<(String, String)>,
    /// Last changes to the config before it is written (listen addresses,
    /// sections a test needs).
    pub customize: Option<ConfigHook<ServerConfig>>,
    /// Open-files limit (soft and hard) the server runs under; `None` = the
    /// test's own. Lets descriptor-exhaustion tests stay cheap.
    pub open_files_limit: Option<u64>,
    /// Directory name under the cluster's (several servers in one test);
    /// default `server`.
    pub name: Option<String>,
}

/// A change a test makes to a generated config.
pub type ConfigHook<C> = Arc<dyn Fn(&mut C) + Send + Sync>;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            lost_grace: Duration::from_secs(2),
            webhook: None,
            file_pass_through: Vec::new(),
            customize: None,
            open_files_limit: None,
            name: None,
        }
    }
}

/// A running `gse-server run` process.
pub struct ServerProc {
    child: Option<Child>,
    open_files_limit: Option<u64>,
    /// Prefix of the command line (e.g. `ip netns exec NS`); empty = none.
    launcher: Vec<String>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub alarm_log: PathBuf,
    pub api_addr: SocketAddr,
    pub link_addr: SocketAddr,
    pub api: Api,
}

impl ServerProc {
    async fn start(cluster: &Cluster, opts: ServerOptions) -> Self {
        let dir = cluster.path.join(opts.name.as_deref().unwrap_or("server"));
        std::fs::create_dir_all(&dir).unwrap();
        let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let link_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = ServerConfig::with_defaults(dir.join("data"), cluster.tls(CertKind::Server));
        cfg.node.id = "test-node".into();
        cfg.api.listen = api_addr;
        cfg.api.apps = vec![AppConfig::with_secret(APP_CODE, APP_SECRET)];
        cfg.link.listen = link_addr;
        cfg.data.listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.link.heartbeat_interval = opts.heartbeat_interval;
        cfg.link.heartbeat_timeout = opts.heartbeat_timeout;
        cfg.alarm.lost_grace = opts.lost_grace;
        cfg.alarm.webhook_url = opts.webhook.clone();
        cfg.alarm.log_file = Some(dir.join("alarms.jsonl"));
        cfg.file.pass_through = opts
            .file_pass_through
            .iter()
            .map(|(from, to)| PassThroughRule {
                from_zone: from.clone(),
                to_zone: to.clone(),
                apps: Vec::new(),
            })
            .collect();
        if let Some(hook) = &opts.customize {
            hook(&mut cfg);
        }
        cfg.resolve();
        let config_path = dir.join("server.toml");
        std::fs::write(&config_path, cfg.to_toml()).unwrap();
        let mut server = ServerProc {
            child: None,
            open_files_limit: opts.open_files_limit,
            launcher: Vec::new(),
            alarm_log: dir.join("alarms.jsonl"),
            log_path: dir.join("server.log"),
            dir,
            config_path,
            api_addr,
            link_addr,
            api: Api::new(format!("http://{api_addr}"), APP_CODE, APP_SECRET),
        };
        server.spawn().await;
        server
    }

    /// A server on a config file the test wrote itself (e.g. the shipped
    /// one with an operator's changes), started through `launcher` (e.g.
    /// [`crate::netlab::NetHost::launcher`]) and reached at `api`. Its files
    /// are in `dir`.
    pub async fn from_config(
        dir: PathBuf,
        config_path: PathBuf,
        launcher: Vec<String>,
        api: Api,
        api_addr: SocketAddr,
    ) -> ServerProc {
        let text = std::fs::read_to_string(&config_path).expect("server config");
        let mut cfg = ServerConfig::from_toml(&text).expect("a valid server config");
        cfg.resolve();
        let mut server = ServerProc {
            child: None,
            open_files_limit: None,
            launcher,
            alarm_log: cfg.alarm.log_file.clone().expect("resolved"),
            log_path: dir.join("server.log"),
            dir,
            config_path,
            api_addr,
            link_addr: cfg.link.listen,
            api,
        };
        server.spawn().await;
        server
    }

    /// `gse-server`, or a shell that lowers the open-files limit and then
    /// becomes `gse-server` (exec: the pid is the server's), behind the
    /// launcher if any.
    fn command(&self) -> Command {
        let mut args: Vec<std::ffi::OsString> = self.launcher.iter().map(Into::into).collect();
        if let Some(n) = self.open_files_limit {
            args.extend(["/bin/sh", "-c"].map(Into::into));
            args.push(format!("ulimit -n {n} && exec \"$0\" \"$@\"").into());
        }
        args.push(bin("gse-server").into());
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]);
        cmd
    }

    async fn spawn(&mut self) {
        let child = self
            .command()
            .arg("--log-level")
            .arg("debug")
            .arg("--log-file")
            .arg(&self.log_path)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn gse-server");
        self.child = Some(child);
        let api = self.api.clone();
        eventually("gse-server /healthz", Duration::from_secs(20), || {
            let api = api.clone();
            async move {
                match api.get("/healthz").await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process was started and not stopped or killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Alarms written to the alarm log so far.
    pub fn alarms(&self) -> Vec<serde_json::Value> {
        crate::read_lines(&self.alarm_log)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the exit code if it exited.
    pub fn stop(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|c| stop_child(c, Duration::from_secs(10)))
    }

    /// Stops and starts the server on the same config, ports and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill9(&mut self) {
        kill_now(&mut self.child);
    }

    /// Starts the server again after [`ServerProc::kill9`] or
    /// [`ServerProc::stop`], on the same config, ports and data.
    pub async fn start_again(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        kill_now(&mut self.child);
    }
}

/// Knobs of a test agent.
#[derive(Clone)]
pub struct AgentOptions {
    /// Identity IP (K7).
    pub ip: IpAddr,
    /// Local address to connect from; default: the identity IP when it is
    /// a loopback address.
    pub bind_ip: Option<IpAddr>,
    pub cloud_id: i64,
    /// TLS files; default: the cluster's agent certificate.
    pub tls: Option<TlsFiles>,
    /// P2P zone (F8); "" = the default zone.
    pub zone: String,
    /// Whether the agent serves pieces to peers (a P2P listener on
    /// `<ip>:0`); false = `p2p_listen = ""`.
    pub p2p: bool,
    /// Agent-wide upload cap, MB/s; 0 = unlimited.
    pub upload_speed_mb: u64,
    /// Last changes to the config before it is written.
    pub customize: Option<ConfigHook<AgentConfig>>,
    /// A command that starts the agent: the agent's binary and arguments
    /// are appended (e.g. `sh -c 'exec 7<FILE; exec "$@"' sh` to start it
    /// with an inherited descriptor). Empty = run the agent directly.
    pub launcher: Vec<String>,
    /// Directory name under the cluster's, for two agents (two "hosts")
    /// claiming one identity; default `agent-<cloud>-<ip>`.
    pub name: Option<String>,
    /// The agent binary; default the native `gse-agent` beside the tests
    /// (a cross-built one runs through a `launcher` such as qemu).
    pub binary: Option<PathBuf>,
}

impl AgentOptions {
    pub fn ip(ip: &str) -> Self {
        AgentOptions {
            ip: ip.parse().expect("an IP"),
            bind_ip: None,
            cloud_id: 0,
            tls: None,
            zone: String::new(),
            p2p: true,
            upload_speed_mb: 0,
            customize: None,
            launcher: Vec::new(),
            name: None,
            binary: None,
        }
    }
}

/// A running `gse-agent` process.
pub struct AgentProc {
    child: Option<Child>,
    launcher: Vec<String>,
    binary: PathBuf,
    pub ip: IpAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl AgentProc {
    fn start(cluster: &Cluster, servers: &[SocketAddr], opts: AgentOptions) -> Self {
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("agent-{}-{}", opts.cloud_id, opts.ip));
        let dir = cluster.path.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tls = opts
            .tls
            .clone()
            .unwrap_or_else(|| cluster.tls(CertKind::Agent));
        let mut cfg = local_config(dir.join("data"), servers, &tls, opts.ip);
        cfg.agent.cloud_id = opts.cloud_id;
        cfg.agent.zone = opts.zone.clone();
        cfg.file.p2p_listen = opts.p2p.then(|| SocketAddr::new(opts.ip, 0));
        cfg.file.upload_speed_mb = opts.upload_speed_mb;
        cfg.upstream.bind_ip = opts.bind_ip.or(opts.ip.is_loopback().then_some(opts.ip));
        cfg.upstream.backoff_initial = Duration::from_millis(200);
        cfg.upstream.backoff_max = Duration::from_secs(2);
        if let Some(hook) = &opts.customize {
            hook(&mut cfg);
        }
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, cfg.to_toml()).unwrap();
        let mut agent = AgentProc::new(dir, config_path, opts.ip, opts.launcher.clone());
        if let Some(binary) = opts.binary {
            agent.binary = binary;
        }
        agent.spawn();
        agent
    }

    /// An agent on a config file the test wrote itself (e.g. the shipped
    /// one with an operator's changes), started through `launcher`; its
    /// identity IP is `ip`, its files are in `dir`.
    pub fn from_config(
        dir: PathBuf,
        config_path: PathBuf,
        ip: IpAddr,
        launcher: Vec<String>,
    ) -> AgentProc {
        let mut agent = AgentProc::new(dir, config_path, ip, launcher);
        agent.spawn();
        agent
    }

    fn new(dir: PathBuf, config_path: PathBuf, ip: IpAddr, launcher: Vec<String>) -> AgentProc {
        AgentProc {
            child: None,
            launcher,
            binary: bin("gse-agent"),
            ip,
            log_path: dir.join("agent.log"),
            dir,
            config_path,
        }
    }

    fn spawn(&mut self) {
        let files = (
            self.config_path.as_path(),
            self.log_path.as_path(),
            self.dir.as_path(),
        );
        self.child = Some(spawn_gse(&self.binary, &self.launcher, files));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The agent's id, once it has written it.
    pub fn agent_id(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("data/agent_id"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal to the agent process.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), sig);
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill9(&mut self) {
        kill_now(&mut self.child);
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the exit code if it exited.
    pub fn stop(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|c| stop_child(c, Duration::from_secs(10)))
    }

    /// Starts the agent again with the same config and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGKILL to `child`, if any, and reap it.
pub(crate) fn kill_now(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts the gse binary `name` (through `launcher`, e.g. `ip netns exec
/// NS`, when not empty) on `config`, logging at debug level to `log`, its
/// stderr to `dir/stderr.log`.
pub(crate) fn spawn_gse(
    binary: &Path,
    launcher: &[String],
    (config, log, dir): (&Path, &Path, &Path),
) -> Child {
    let name = binary.display();
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("debug")
        .arg("--log-file")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr.log")).unwrap(),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// SIGTERM, wait up to `grace`, then SIGKILL; the exit code if it exited.
pub fn stop_child(mut child: Child, grace: Duration) -> Option<i32> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

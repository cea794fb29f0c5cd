//! `gse-proxy` processes for tests (issue 12): one cloud area's relay,
//! linked upstream to test servers (or to another proxy, for chains).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use gse_agent_config::{AgentConfig, UpstreamConfig};
use gse_core::certs::CertKind;
use gse_proxy::config::{FileSection, MetricsSection, ProxyConfig, ProxySection};

use crate::procs::{AgentOptions, Cluster, kill_now, spawn_gse, stop_child};
use crate::{eventually, free_port};

/// Knobs of a test proxy.
#[derive(Clone)]
pub struct ProxyOptions {
    pub id: String,
    /// The cloud area it serves.
    pub area: i64,
    /// The address it listens on for its agents (and connects from).
    pub ip: IpAddr,
    /// Its upstream: nodes' link addresses, or another proxy's.
    pub upstream: Vec<SocketAddr>,
    /// "gse-server", or "gse-proxy" when the upstream is a proxy.
    pub server_name: String,
}

impl ProxyOptions {
    /// Proxy `id` of `area` on `ip`, linked to `nodes`.
    pub fn new(id: &str, area: i64, ip: &str, nodes: &[SocketAddr]) -> Self {
        ProxyOptions {
            id: id.into(),
            area,
            ip: ip.parse().expect("an IP"),
            upstream: nodes.to_vec(),
            server_name: gse_core::certs::DEFAULT_SERVER_NAME.into(),
        }
    }

    /// Proxy `id` of the same area below `upper` (a chain).
    pub fn below(id: &str, ip: &str, upper: &ProxyProc) -> Self {
        ProxyOptions {
            server_name: "gse-proxy".into(),
            ..ProxyOptions::new(id, upper.area, ip, &[upper.listen])
        }
    }
}

/// A running `gse-proxy` process.
pub struct ProxyProc {
    child: Option<Child>,
    /// A command the proxy's binary and arguments are appended to (`ip
    /// netns exec NS`); empty: run directly.
    launcher: Vec<String>,
    pub id: String,
    pub area: i64,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Where its agents connect.
    pub listen: SocketAddr,
    /// Its Prometheus endpoint.
    pub metrics: SocketAddr,
}

impl Cluster {
    /// Starts a proxy (its certificate, for its area, is issued on first
    /// use); [`ProxyProc::wait_linked`] waits until it is linked upstream.
    pub fn proxy(&self, opts: ProxyOptions) -> ProxyProc {
        let dir = self.path.join(format!("proxy-{}", opts.id));
        std::fs::create_dir_all(&dir).unwrap();
        let stem = format!("gse_proxy_{}", opts.area);
        let paths = self.certs.paths(CertKind::Proxy, Some(&stem));
        if !paths.cert.exists() {
            self.certs
                .issue_proxy(opts.area, None, &[], 30, false)
                .expect("a proxy certificate for the area");
        }
        let tls = gse_core::tls::TlsFiles::new(self.certs.ca_cert(), paths.cert, paths.key);
        let listen = SocketAddr::new(opts.ip, free_port());
        let data_listen = SocketAddr::new(opts.ip, free_port());
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = ProxyConfig {
            proxy: ProxySection {
                id: opts.id.clone(),
                bk_cloud_id: opts.area,
                listen,
                data_listen,
                advertise_ip: None,
                handshake_timeout: Duration::from_secs(10),
                max_agents: 50_000,
                max_pending: 1024,
                max_pending_per_ip: 64,
            },
            upstream: UpstreamConfig {
                servers: opts.upstream.iter().map(|a| a.to_string()).collect(),
                server_name: opts.server_name.clone(),
                bind_ip: opts.ip.is_loopback().then_some(opts.ip),
                connect_timeout: Duration::from_secs(5),
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(2),
            },
            tls,
            metrics: MetricsSection {
                listen: Some(metrics),
            },
            file: FileSection {
                cache_dir: dir.join("file-cache"),
                ..FileSection::default()
            },
        };
        cfg.validate().expect("a valid proxy config");
        let config_path = dir.join("proxy.toml");
        std::fs::write(&config_path, cfg.to_toml()).unwrap();
        let mut proxy = ProxyProc {
            child: None,
            launcher: Vec::new(),
            id: opts.id,
            area: opts.area,
            log_path: dir.join("proxy.log"),
            dir,
            config_path,
            listen,
            metrics,
        };
        proxy.spawn();
        proxy
    }
}

impl ProxyProc {
    /// A proxy on a config file the test wrote itself (the shipped one
    /// with an operator's changes), started through `launcher`; its files
    /// are in `dir`. `metrics`: where the test reaches its endpoint.
    pub fn from_config(
        dir: PathBuf,
        config_path: PathBuf,
        launcher: Vec<String>,
        metrics: SocketAddr,
    ) -> ProxyProc {
        let cfg = ProxyConfig::load(&config_path).expect("a valid proxy config");
        let mut proxy = ProxyProc {
            child: None,
            launcher,
            id: cfg.proxy.id.clone(),
            area: cfg.proxy.bk_cloud_id,
            log_path: dir.join("proxy.log"),
            dir,
            config_path,
            listen: cfg.agent_addr(cfg.proxy.listen),
            metrics,
        };
        proxy.spawn();
        proxy
    }

    fn spawn(&mut self) {
        let files = (
            self.config_path.as_path(),
            self.log_path.as_path(),
            self.dir.as_path(),
        );
        self.child = Some(spawn_gse(&crate::bin("gse-proxy"), &self.launcher, files));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its Prometheus metrics now (empty when it does not answer).
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// A metric's value (the first line that starts with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Waits until the proxy is linked upstream.
    pub async fn wait_linked(&self) {
        eventually(
            &format!("proxy {} linked upstream", self.id),
            Duration::from_secs(20),
            || async {
                (self.metric("gse_proxy_upstream_connected").await == Some(1.0))
                    .then_some(())
                    .ok_or_else(|| self.metrics_tail())
            },
        )
        .await;
    }

    fn metrics_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill9(&mut self) {
        kill_now(&mut self.child);
    }

    /// SIGTERM, then SIGKILL after 10 s; the exit code if it exited.
    pub fn stop(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|c| stop_child(c, Duration::from_secs(10)))
    }

    /// Starts it again with the same config.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of an agent of cloud area `area` at `ip`: it takes its area's
/// proxy as its server (`server_name = "gse-proxy"`).
pub fn area_agent(ip: &str, area: i64) -> AgentOptions {
    let hook: Arc<dyn Fn(&mut AgentConfig) + Send + Sync> = Arc::new(|cfg: &mut AgentConfig| {
        cfg.upstream.server_name = "gse-proxy".into();
    });
    AgentOptions {
        cloud_id: area,
        customize: Some(hook),
        ..AgentOptions::ip(ip)
    }
}

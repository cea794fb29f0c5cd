//! Quickstart's cloud areas (`--cloud-area ID:K`, issue 12): for each, a
//! `gse-proxy` child process and K agents of area ID that know only it.
//!
//! Area n (0-based, in the order given) lives on 127.(20+n).0.0/24: its
//! proxy listens on .1 (agents, data and metrics each on a free port), its
//! agents are .2 .. .(K+1). The proxy's certificate
//! (`certs/gse_proxy_<ID>.crt`, bound to the area) is made on first use;
//! its config, log and cache are under `DIR/proxy-<ID>/`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_agent_config::UpstreamConfig;
use gse_core::certs::{CertDir, CertKind, DEFAULT_LEAF_DAYS};
use gse_core::private_files;
use gse_core::tls::TlsFiles;
use gse_proxy::config::{FileSection, MetricsSection, ProxyConfig, ProxySection};
use serde::Serialize;
use tokio::process::{Child, Command};

/// Most agents quickstart starts behind one proxy.
pub const MAX_AREA_AGENTS: u32 = 250;
/// Most areas.
pub const MAX_AREAS: usize = 20;

/// `--cloud-area ID:K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaOption {
    pub bk_cloud_id: i64,
    pub agents: u32,
}

impl FromStr for AreaOption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, k) = s.split_once(':').ok_or_else(|| {
            format!(
                "--cloud-area {s:?}: give ID:K, the cloud area and its number of agents (e.g. 7:3)"
            )
        })?;
        let bk_cloud_id: i64 = id
            .parse()
            .map_err(|_| format!("--cloud-area {s:?}: {id:?} is not a cloud area id"))?;
        let agents: u32 = k
            .parse()
            .map_err(|_| format!("--cloud-area {s:?}: {k:?} is not a number of agents"))?;
        if bk_cloud_id <= 0 {
            return Err(format!(
                "--cloud-area {s:?}: area {bk_cloud_id} needs no proxy (area 0 is the servers' own); give an area above 0"
            ));
        }
        if agents == 0 || agents > MAX_AREA_AGENTS {
            return Err(format!(
                "--cloud-area {s:?}: give 1..={MAX_AREA_AGENTS} agents"
            ));
        }
        Ok(AreaOption {
            bk_cloud_id,
            agents,
        })
    }
}

/// Checks the areas together: distinct ids, not too many.
pub fn check(areas: &[AreaOption]) -> Result<()> {
    if areas.len() > MAX_AREAS {
        bail!("at most {MAX_AREAS} --cloud-area options");
    }
    for (i, a) in areas.iter().enumerate() {
        if areas[..i].iter().any(|b| b.bk_cloud_id == a.bk_cloud_id) {
            bail!("--cloud-area {} is given twice", a.bk_cloud_id);
        }
    }
    Ok(())
}

/// quickstart.json's `proxies[]`.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyEntry {
    pub bk_cloud_id: i64,
    /// Where the area's agents connect.
    pub agent_listen: String,
    pub pid: u32,
    pub config: PathBuf,
    /// Its Prometheus endpoint.
    pub metrics: String,
}

/// A `gse-proxy` child process.
pub struct LocalProxy {
    pub child: Child,
    pub entry: ProxyEntry,
    pub log: PathBuf,
    /// Where its agents connect.
    pub listen: SocketAddr,
}

/// The proxy's address of area `index` (0-based).
fn proxy_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 20 + index as u8, 0, 1)
}

/// The identity IP of agent `j` (1-based) of area `index`.
pub fn area_agent_ip(index: usize, j: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 20 + index as u8, 0, 1 + j as u8))
}

/// A port free on `ip` now (quickstart runs on the user's host: a port
/// taken between this check and the proxy's bind fails its start, which
/// is reported).
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind {ip}: is 127.0.0.0/8 routed to lo?"))?;
    Ok(l.local_addr()?.port())
}

/// Starts the proxy of `area` (the `index`-th) linked to `nodes`.
pub fn start_proxy(
    bin: &Path,
    (dir, certs): (&Path, &CertDir),
    (area, index): (&AreaOption, usize),
    nodes: &[SocketAddr],
) -> Result<LocalProxy> {
    let id = area.bk_cloud_id;
    let stem = format!("gse_proxy_{id}");
    let paths = certs.paths(CertKind::Proxy, Some(&stem));
    if !paths.cert.exists() {
        certs
            .issue_proxy(id, None, &[], DEFAULT_LEAF_DAYS, false)
            .with_context(|| format!("cannot make the proxy certificate of cloud area {id}"))?;
    }
    let home = dir.join(format!("proxy-{id}"));
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let ip = proxy_ip(index);
    let listen = SocketAddr::new(ip.into(), free_port(ip)?);
    let metrics = SocketAddr::new(ip.into(), free_port(ip)?);
    let cfg = ProxyConfig {
        proxy: ProxySection {
            id: format!("quickstart-proxy-{id}"),
            bk_cloud_id: id,
            listen,
            data_listen: SocketAddr::new(ip.into(), free_port(ip)?),
            advertise_ip: None,
            handshake_timeout: Duration::from_secs(10),
            max_agents: 50_000,
            max_pending: 1024,
            max_pending_per_ip: 256,
        },
        upstream: UpstreamConfig {
            servers: nodes.iter().map(ToString::to_string).collect(),
            server_name: gse_core::certs::DEFAULT_SERVER_NAME.into(),
            bind_ip: Some(ip.into()),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
        },
        tls: TlsFiles::new(certs.ca_cert(), paths.cert, paths.key),
        metrics: MetricsSection {
            listen: Some(metrics),
        },
        file: FileSection {
            cache_dir: home.join("file-cache"),
            ..FileSection::default()
        },
    };
    cfg.validate()
        .map_err(|p| anyhow::anyhow!("quickstart made a bad proxy config: {}", p.join("; ")))?;
    let config = home.join("proxy.toml");
    private_files::write_private(&config, cfg.to_toml().as_bytes())
        .with_context(|| format!("cannot write {}", config.display()))?;
    let log = home.join("proxy.log");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--log-file")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(LocalProxy {
        entry: ProxyEntry {
            bk_cloud_id: id,
            agent_listen: listen.to_string(),
            pid: child.id().unwrap_or(0),
            config,
            metrics: format!("http://{metrics}/metrics"),
        },
        child,
        log,
        listen,
    })
}

/// Fails when a proxy has exited.
pub fn check_running(proxies: &mut [LocalProxy]) -> Result<()> {
    for p in proxies.iter_mut() {
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "the proxy of cloud area {} exited ({status}); its log {} ends with:\n{}",
                p.entry.bk_cloud_id,
                p.log.display(),
                crate::log_tail(&p.log, 10)
            );
        }
    }
    Ok(())
}

/// SIGTERM every proxy, then SIGKILL after `grace`.
pub async fn stop_proxies(proxies: &mut [LocalProxy], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for p in proxies.iter() {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for p in proxies.iter_mut() {
        if tokio::time::timeout(grace, p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
    }
}

/// The proxy binary: next to this executable.
pub fn find_proxy_bin() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("gse-proxy");
    if !path.is_file() {
        bail!(
            "cannot find the gse-proxy binary at {}; build it (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_area_option_is_an_area_above_0_and_a_number_of_agents() {
        assert_eq!(
            "7:3".parse::<AreaOption>().unwrap(),
            AreaOption {
                bk_cloud_id: 7,
                agents: 3
            }
        );
        for (bad, why) in [
            ("7", "give ID:K"),
            ("0:3", "needs no proxy"),
            ("x:3", "not a cloud area"),
            ("7:0", "1..=250"),
            ("7:251", "1..=250"),
        ] {
            let e = bad.parse::<AreaOption>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let twice = ["7:1".parse().unwrap(), "7:2".parse().unwrap()];
        assert!(check(&twice).unwrap_err().to_string().contains("twice"));
        assert_eq!(area_agent_ip(1, 2).to_string(), "127.21.0.3");
    }
}

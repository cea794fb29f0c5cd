//! `--real-agents N`: N real `gse-agent` processes (the binary beside
//! gse-bench), running real commands through the real process executor.
//!
//! Agent i (1-based) has identity IP 127.0.0.i and binds its connection to
//! that address, as `gse-server quickstart` does; its config is written
//! with `gse_agent::AgentConfig::new` into `<bench dir>/agents/<ip>/`, with
//! its log beside it. [`RealAgents::stop`] sends SIGTERM, then kills after
//! a grace period.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_agent::AgentConfig;
use gse_core::tls::TlsFiles;
use gse_server::quickstart::agent_ip;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::timeout;

use super::api::ApiClient;
use crate::procfs::rss_kib;
use crate::server::beside_current_exe;

/// Most real agents: their identity IPs stay in 127.0.0.0/8 like quickstart's.
const MAX_REAL_AGENTS: u32 = gse_server::quickstart::MAX_AGENTS;
/// How long an agent has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One running agent.
struct RealAgent {
    ip: IpAddr,
    child: Child,
    log: PathBuf,
}

/// The agent processes of a run.
pub struct RealAgents {
    agents: Vec<RealAgent>,
}

impl RealAgents {
    /// Spawns `n` agents connecting to `link`, with their files under `dir`.
    pub fn spawn(n: u32, dir: &Path, link: SocketAddr, tls: &TlsFiles) -> Result<Self> {
        check_count(n)?;
        let bin = beside_current_exe("gse-agent")?;
        let agents = (1..=n)
            .map(|i| spawn_one(&bin, dir, link, tls, agent_ip(i)))
            .collect::<Result<_>>()?;
        Ok(RealAgents { agents })
    }

    /// `cloud_id:ip` of every agent, as task targets.
    pub fn targets(&self) -> Vec<String> {
        self.agents.iter().map(|a| format!("0:{}", a.ip)).collect()
    }

    /// Waits until the server reports every agent alive; fails early, with
    /// its log's path, if an agent exits.
    pub async fn wait_alive(&mut self, api: &ApiClient) -> Result<()> {
        let ips: Vec<String> = self.agents.iter().map(|a| a.ip.to_string()).collect();
        let agents = &mut self.agents;
        super::wait_alive(api, &ips, || {
            for a in agents.iter_mut() {
                if let Some(status) = a.child.try_wait()? {
                    bail!(
                        "agent {} exited ({status}) before registering; see {}",
                        a.ip,
                        a.log.display()
                    );
                }
            }
            Ok(())
        })
        .await
    }

    /// Resident memory of all agents together, KiB.
    pub fn rss_kib_total(&self) -> u64 {
        self.agents
            .iter()
            .filter_map(|a| a.child.id())
            .filter_map(|pid| rss_kib(&pid.to_string()).ok())
            .sum()
    }

    /// SIGTERM to every agent, then SIGKILL to those still running after
    /// the grace period.
    pub async fn stop(&mut self) {
        for a in &self.agents {
            if let Some(pid) = a.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for a in &mut self.agents {
            if timeout(STOP_GRACE, a.child.wait()).await.is_err() {
                eprintln!(
                    "agent {} did not stop within {STOP_GRACE:?}; killing it",
                    a.ip
                );
                let _ = a.child.kill().await;
            }
        }
    }
}

/// Refuses a count of agents whose identity IPs quickstart's scheme cannot
/// give.
pub fn check_count(n: u32) -> Result<()> {
    if n == 0 || n > MAX_REAL_AGENTS {
        bail!("--real-agents {n} is out of range: give 1..={MAX_REAL_AGENTS}");
    }
    Ok(())
}

fn spawn_one(
    bin: &Path,
    dir: &Path,
    link: SocketAddr,
    tls: &TlsFiles,
    ip: IpAddr,
) -> Result<RealAgent> {
    let home = dir.join("agents").join(ip.to_string());
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let mut cfg = AgentConfig::new(home.join("data"), vec![link.to_string()], tls.clone());
    cfg.agent.identity_ip = Some(ip);
    cfg.upstream.bind_ip = Some(ip);
    let cfg_path = home.join("agent.toml");
    std::fs::write(&cfg_path, cfg.to_toml())
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
    Ok(RealAgent { ip, child, log })
}

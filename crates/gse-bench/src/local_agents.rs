//! Real `gse-agent` processes on this host (the binary beside gse-bench),
//! for `fanout --real-agents` and `p2p`.
//!
//! Agent i (1-based) has identity IP 127.0.0.i and binds its connection to
//! that address, as `gse-server quickstart` does; its config is written
//! by `gse_launch::agent` (quickstart's spawner) into `<bench dir>/agents/<ip>/`,
//! with its log beside it (`p2p` spawns through `spawn_local_agent_with` to
//! set the `[file]` section).
//! [`RealAgents::stop`] sends SIGTERM, then kills after a grace period.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, bail};
use gse_core::tls::TlsFiles;
use gse_launch::agent::{
    LocalAgent as RealAgent, MAX_AGENTS, agent_ip, spawn_local_agent, stop_local_agents,
};
use gse_launch::beside_current_exe;

use crate::api::ApiClient;
use crate::procfs::rss_kib;

/// Most real agents: their identity IPs stay in 127.0.0.0/8 like quickstart's.
const MAX_REAL_AGENTS: u32 = MAX_AGENTS;

/// The agent processes of a run.
pub struct RealAgents {
    agents: Vec<RealAgent>,
}

impl RealAgents {
    /// Spawns `n` plain agents connecting to `link`, with their files under `dir`.
    pub fn spawn(n: u32, dir: &Path, link: SocketAddr, tls: &TlsFiles) -> Result<Self> {
        check_count(n)?;
        let bin = beside_current_exe("gse-agent")?;
        let agents = (1..=n)
            .map(|i| spawn_local_agent(&bin, dir, &[link], tls, agent_ip(i)))
            .collect::<Result<_>>()?;
        Ok(RealAgents { agents })
    }

    /// Agents a bench spawned itself.
    pub fn new(agents: Vec<RealAgent>) -> Self {
        RealAgents { agents }
    }

    /// `cloud_id:ip` of every agent, as task targets.
    pub fn targets(&self) -> Vec<String> {
        self.agents
            .iter()
            .map(|a| format!("{}:{}", a.cloud_id, a.ip))
            .collect()
    }

    /// The agents' pids, as `/proc` names them, in spawn order (an agent
    /// that has exited is left out).
    pub fn pids(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter_map(|a| a.child.id())
            .map(|pid| pid.to_string())
            .collect()
    }

    /// Waits until the server reports every agent alive; fails early, with
    /// its log's path, if an agent exits.
    pub async fn wait_alive(&mut self, api: &ApiClient) -> Result<()> {
        let mut areas: Vec<i64> = self.agents.iter().map(|a| a.cloud_id).collect();
        areas.sort_unstable();
        areas.dedup();
        for area in areas {
            let ips: Vec<String> = self
                .agents
                .iter()
                .filter(|a| a.cloud_id == area)
                .map(|a| a.ip.to_string())
                .collect();
            let agents = &mut self.agents;
            api.wait_alive_in(area, &ips, || {
                for a in agents.iter_mut() {
                    if let Some(status) = a.child.try_wait()? {
                        bail!(
                            "agent {}:{} exited ({status}) before registering; see {}",
                            a.cloud_id,
                            a.ip,
                            a.log.display()
                        );
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Resident memory of all agents together, KiB.
    pub fn rss_kib_total(&self) -> u64 {
        self.pids().iter().filter_map(|pid| rss_kib(pid).ok()).sum()
    }

    /// SIGTERM to every agent, then SIGKILL to those still running after
    /// the grace period.
    pub async fn stop(&mut self) {
        stop_local_agents(&mut self.agents).await;
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

//! Real `gse-agent` processes on this host (quickstart, benches).
//!
//! Agent i (1-based) has identity IP 127.0.0.i ([`agent_ip`]) and binds its
//! connection to that address, so one host holds many distinct agents. Its
//! config, data dir and log are under `<dir>/agents/<ip>/`.
//! [`stop_local_agents`] sends SIGTERM, then kills after a grace period.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use gse_agent_config::AgentConfig;
use gse_core::private_files;
use gse_core::tls::TlsFiles;
use tokio::process::{Child, Command};

/// Most local agents (identity IPs stay inside 127.0.0.0/8).
pub const MAX_AGENTS: u32 = 1000;
/// How long an agent has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A `gse-agent` child process started on this host.
pub struct LocalAgent {
    pub ip: IpAddr,
    /// Its cloud area (`bk_cloud_id`).
    pub cloud_id: i64,
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

/// The config of one of several agents sharing this host: identity IP `ip`,
/// also its source address, connecting to `servers`, its data in
/// `data_dir`, serving peers on `ip` and a free port (it advertises the
/// bound port).
pub fn local_config(
    data_dir: PathBuf,
    servers: &[SocketAddr],
    tls: &TlsFiles,
    ip: IpAddr,
) -> AgentConfig {
    let servers = servers.iter().map(ToString::to_string).collect();
    let mut cfg = AgentConfig::new(data_dir, servers, tls.clone());
    cfg.agent.identity_ip = Some(ip);
    cfg.upstream.bind_ip = Some(ip);
    cfg.file.p2p_listen = Some(SocketAddr::new(ip, 0));
    cfg
}

/// Starts `bin` as an agent with identity IP `ip` connecting to `servers`
/// (every node's agent address); its config, data and log go under
/// `dir/agents/<ip>/`.
pub fn spawn_local_agent(
    bin: &Path,
    dir: &Path,
    servers: &[SocketAddr],
    tls: &TlsFiles,
    ip: IpAddr,
) -> Result<LocalAgent> {
    spawn_local_agent_with(bin, dir, servers, tls, ip, |_| {})
}

/// Like [`spawn_local_agent`], with `customize` applied to the agent's
/// config before it is written (benches set the `[file]` section: P2P
/// listener, upload caps).
pub fn spawn_local_agent_with(
    bin: &Path,
    dir: &Path,
    servers: &[SocketAddr],
    tls: &TlsFiles,
    ip: IpAddr,
    customize: impl FnOnce(&mut AgentConfig),
) -> Result<LocalAgent> {
    let home = dir.join("agents").join(ip.to_string());
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let mut cfg = local_config(home.join("data"), servers, tls, ip);
    customize(&mut cfg);
    let data_ipc = cfg.data.ipc_path(&cfg.agent.data_dir);
    let cfg_path = home.join("agent.toml");
    // 0600: the config names the agent's key file.
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
        cloud_id: cfg.agent.cloud_id,
        child,
        log,
        data_ipc,
    })
}

/// SIGTERM every agent, then SIGKILL those still running after
/// [`STOP_GRACE`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ips_run_on_past_255() {
        assert_eq!(agent_ip(1).to_string(), "127.0.0.1");
        assert_eq!(agent_ip(255).to_string(), "127.0.0.255");
        assert_eq!(agent_ip(256).to_string(), "127.0.1.0");
        assert_eq!(agent_ip(MAX_AGENTS).to_string(), "127.0.3.232");
    }

    #[test]
    fn a_local_config_lists_every_server_and_binds_to_its_identity() {
        let tls = TlsFiles::new("ca".into(), "crt".into(), "key".into());
        let servers: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let cfg = local_config("/d".into(), &servers, &tls, agent_ip(7));
        assert_eq!(cfg.upstream.servers, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cfg.agent.identity_ip, Some(agent_ip(7)));
        assert_eq!(cfg.upstream.bind_ip, Some(agent_ip(7)));
        assert_eq!(cfg.file.p2p_listen, Some("127.0.0.7:0".parse().unwrap()));
        cfg.validate().unwrap();
    }
}

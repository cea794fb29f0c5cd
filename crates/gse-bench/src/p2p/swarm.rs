//! The agents of one phase: the source at 127.0.0.1 and N targets at
//! 127.0.0.2.., each a real `gse-agent` with the agent-wide upload cap U
//! (`[file] upload_speed_mb`) and a P2P listener on its own address, port 0
//! (in the direct phase the targets have none: `p2p_listen = ""`).
//!
//! Every target is told to write to the same directory (bk-job sends one
//! `store_dir` for all targets), which on one machine would be one file. So
//! when mount namespaces are available (root, `unshare`), each target runs
//! in its own: a wrapper script bind-mounts `agents/<ip>/dst` over the
//! shared directory, as if each target were its own host. The mounts vanish
//! with the agent. Without them the targets share the directory and only
//! the one file can be checked ([`Isolation::Shared`]).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gse_launch::agent::{LocalAgent, agent_ip, spawn_local_agent_with};

use crate::api::ApiClient;
use crate::local_agents::RealAgents;
use crate::procfs::{cpu_seconds, peak_rss_kib, written_bytes};
use gse_launch::beside_current_exe;

use crate::server::BenchServer;

/// How targets get a directory of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Each target in its own mount namespace (per-target files checked).
    MountNamespace,
    /// All targets write the one shared directory.
    Shared,
}

impl Isolation {
    /// Mount namespaces if this process may make them (tried for real),
    /// unless `shared` is asked for.
    pub fn probe(dir: &Path, shared: bool) -> Isolation {
        if shared {
            return Isolation::Shared;
        }
        let (a, b) = (dir.join("probe-a"), dir.join("probe-b"));
        let ok = std::fs::create_dir_all(&a).is_ok()
            && std::fs::create_dir_all(&b).is_ok()
            && std::process::Command::new("unshare")
                .args(["--mount", "--propagation", "private", "mount", "--bind"])
                .arg(&a)
                .arg(&b)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let _ = std::fs::remove_dir(&a);
        let _ = std::fs::remove_dir(&b);
        if ok {
            Isolation::MountNamespace
        } else {
            eprintln!(
                "mount namespaces are not available (needs root and unshare): targets share one directory"
            );
            Isolation::Shared
        }
    }
}

/// Where everything of a run lives.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The bench's temp dir.
    pub dir: PathBuf,
    pub isolation: Isolation,
    pub targets: u32,
}

impl Layout {
    pub fn source_ip(&self) -> IpAddr {
        agent_ip(1)
    }

    pub fn target_ips(&self) -> Vec<IpAddr> {
        (2..=self.targets + 1).map(agent_ip).collect()
    }

    /// Where the source file is.
    pub fn source_dir(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// The `store_dir` every target is told.
    pub fn shared_target_dir(&self) -> PathBuf {
        self.dir.join("dst")
    }

    /// Where target `ip`'s files really land.
    pub fn target_dir(&self, ip: IpAddr) -> PathBuf {
        match self.isolation {
            Isolation::MountNamespace => self.dir.join("agents").join(ip.to_string()).join("dst"),
            Isolation::Shared => self.shared_target_dir(),
        }
    }
}

/// What the agents of a phase do.
#[derive(Clone, Copy, Debug)]
pub struct PhaseAgents {
    /// Agent-wide upload cap, MB/s (the agent's MB: 1024 * 1024 bytes).
    pub upload_mb: u64,
    /// Whether targets serve pieces to each other.
    pub targets_serve: bool,
    /// The targets are agents of this cloud area behind the proxy at this
    /// address (issue 12); `None`: connected to the server.
    pub behind: Option<(i64, SocketAddr)>,
}

/// The running agents of a phase: index 0 is the source.
pub struct Swarm {
    agents: RealAgents,
    marks: Vec<Mark>,
}

/// A process's counters at the start of the measured part.
#[derive(Clone, Copy, Default)]
struct Mark {
    cpu_s: f64,
    written: u64,
}

/// Figures of the agents over the measured part.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwarmFigures {
    /// Everything the source wrote (sockets and its log): what it sent.
    pub source_bytes_sent: u64,
    pub source_peak_rss_kib: u64,
    /// The largest `VmHWM` of any agent, the source included.
    pub peak_rss_kib_max: u64,
    /// All agents together, percent of one core.
    pub cpu_seconds: f64,
}

impl Swarm {
    /// Spawns the source and the targets and waits until all are alive.
    pub async fn start(
        layout: &Layout,
        server: &BenchServer,
        api: &ApiClient,
        what: PhaseAgents,
    ) -> Result<Swarm> {
        let bin = beside_current_exe("gse-agent")?;
        let mut spawned = vec![spawn(
            layout,
            server,
            &bin,
            (layout.source_ip(), None),
            true,
            what.upload_mb,
        )?];
        for ip in layout.target_ips() {
            let bin = match layout.isolation {
                Isolation::MountNamespace => namespace_wrapper(layout, &bin, ip)?,
                Isolation::Shared => bin.clone(),
            };
            spawned.push(spawn(
                layout,
                server,
                &bin,
                (ip, what.behind),
                what.targets_serve,
                what.upload_mb,
            )?);
        }
        let mut agents = RealAgents::new(spawned);
        if let Err(e) = agents.wait_alive(api).await {
            agents.stop().await;
            return Err(e);
        }
        Ok(Swarm {
            agents,
            marks: Vec::new(),
        })
    }

    /// `cloud_id:ip` of the source and of the targets.
    pub fn names(&self) -> (String, Vec<String>) {
        let mut all = self.agents.targets();
        let source = all.remove(0);
        (source, all)
    }

    /// Marks the counters the figures are measured from.
    pub fn mark(&mut self) -> Result<()> {
        self.marks = self
            .agents
            .pids()
            .iter()
            .map(|pid| {
                Ok(Mark {
                    cpu_s: cpu_seconds(pid)?,
                    written: written_bytes(pid)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The figures since [`Swarm::mark`]; read before stopping.
    pub fn figures(&self) -> Result<SwarmFigures> {
        let pids = self.agents.pids();
        let mut f = SwarmFigures::default();
        for (i, (pid, mark)) in pids.iter().zip(&self.marks).enumerate() {
            let peak = peak_rss_kib(pid)?;
            f.peak_rss_kib_max = f.peak_rss_kib_max.max(peak);
            f.cpu_seconds += cpu_seconds(pid)? - mark.cpu_s;
            if i == 0 {
                f.source_peak_rss_kib = peak;
                f.source_bytes_sent = written_bytes(pid)? - mark.written;
            }
        }
        Ok(f)
    }

    pub async fn stop(mut self) {
        self.agents.stop().await;
    }
}

/// One agent with the bench's `[file]` section; behind the proxy of
/// `behind` (its area, its address) if given.
fn spawn(
    layout: &Layout,
    server: &BenchServer,
    bin: &Path,
    (ip, behind): (IpAddr, Option<(i64, SocketAddr)>),
    serve: bool,
    upload_mb: u64,
) -> Result<LocalAgent> {
    let upstream = behind.map_or(server.link, |(_, proxy)| proxy);
    spawn_local_agent_with(
        bin,
        &layout.dir,
        &[upstream],
        &server.agent_tls,
        ip,
        |cfg| {
            cfg.file.p2p_listen = serve.then_some(SocketAddr::new(ip, 0));
            cfg.file.upload_speed_mb = upload_mb;
            if let Some((area, _)) = behind {
                cfg.agent.cloud_id = area;
                cfg.upstream.server_name = "gse-proxy".into();
            }
        },
    )
}

/// A script that runs `bin` in a mount namespace of its own where the
/// shared target directory is this target's own directory.
fn namespace_wrapper(layout: &Layout, bin: &Path, ip: IpAddr) -> Result<PathBuf> {
    let own = layout.target_dir(ip);
    let shared = layout.shared_target_dir();
    std::fs::create_dir_all(&own).with_context(|| format!("cannot create {}", own.display()))?;
    std::fs::create_dir_all(&shared)
        .with_context(|| format!("cannot create {}", shared.display()))?;
    let script = own.with_file_name("gse-agent-in-namespace.sh");
    let text = format!(
        "#!/bin/sh\n# gse-bench p2p: this target sees {own} as {shared}.\n\
         exec unshare --mount --propagation private sh -c 'mount --bind \"$1\" \"$2\" && shift 2 && exec \"$0\" \"$@\"' \
         {bin} {own} {shared} \"$@\"\n",
        own = quote(&own),
        shared = quote(&shared),
        bin = quote(bin),
    );
    std::fs::write(&script, text).with_context(|| format!("cannot write {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// `path` in single quotes for sh.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

//! The agent's watchdog (issue 13): `gse-agent run` supervises its worker,
//! a child `gse-agent worker` process, like GSE's own agent and osquery's
//! watchdog do. The pid a service manager (or quickstart) knows stays the
//! watchdog's.
//!
//! - A worker that exits (crash, signal, or an error it cannot get past)
//!   is started again after a back-off that doubles from
//!   `watchdog.backoff_initial` to `backoff_max`, reset once a worker stayed
//!   up `stable_after`.
//! - Every `check_interval` the worker's own resident memory and cpu time
//!   are read from /proc ([`Budget`]); over `memory_max_mb` for
//!   `memory_checks` checks in a row, or over `cpu_max_percent` of a core
//!   averaged over `cpu_window`, it is stopped (SIGTERM, SIGKILL after
//!   `stop_grace`) and started again after the same back-off.
//! - The new worker is told why in the environment ([`RESTART_ENV`],
//!   [`Restart`]) and says so in the heartbeats of its first session; the
//!   node raises `agent_restarted`.
//! - Plugins the worker hosts run in process groups of their own, so a
//!   worker's death does not take them: the next worker adopts them again
//!   by pid (`plugins.json`). Tasks the dead worker was running are not
//!   killed; the node failed them (117) when its link ended.
//! - SIGTERM or SIGINT to the watchdog stops the worker (SIGTERM: it says
//!   goodbye and spools its data) and then the watchdog. A worker whose
//!   watchdog is gone (killed) notices within half a second
//!   ([`watch_parent`]) and stops the same way, so no worker runs
//!   unsupervised.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::config::WatchdogConfig;

/// Where a restarted worker finds why ([`Restart`] as JSON).
pub const RESTART_ENV: &str = "GSE_AGENT_RESTART";

/// Why the watchdog restarted the worker, for its heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub reason: String,
    pub at_ms: u64,
    /// Restarts since the watchdog started.
    pub restarts: u32,
}

impl Restart {
    /// What the watchdog put in this process's environment, if anything.
    pub fn from_env() -> Option<Restart> {
        let raw = std::env::var(RESTART_ENV).ok()?;
        serde_json::from_str(&raw).ok()
    }
}

/// One sample of the worker's use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Instant,
    pub rss_bytes: u64,
    /// user + system cpu time of the worker itself (not its children).
    pub cpu: Duration,
}

/// The watchdog's budget check over the worker's samples.
#[derive(Debug)]
pub struct Budget {
    memory_max_bytes: u64,
    memory_checks: u32,
    cpu_max_percent: u32,
    cpu_window: Duration,
    over_memory: u32,
    samples: std::collections::VecDeque<Sample>,
}

impl Budget {
    pub fn new(cfg: &WatchdogConfig) -> Self {
        Budget {
            memory_max_bytes: cfg.memory_max_mb.saturating_mul(1 << 20),
            memory_checks: cfg.memory_checks.max(1),
            cpu_max_percent: cfg.cpu_max_percent,
            cpu_window: cfg.cpu_window,
            over_memory: 0,
            samples: Default::default(),
        }
    }

    /// Takes a sample; `Some(reason)` when the worker is over its budget.
    pub fn check(&mut self, s: Sample) -> Option<String> {
        if self.memory_max_bytes > 0 && s.rss_bytes > self.memory_max_bytes {
            self.over_memory += 1;
            if self.over_memory >= self.memory_checks {
                return Some(format!(
                    "over its memory budget: {} MiB resident, over watchdog.memory_max_mb = {} for {} checks in a row",
                    s.rss_bytes >> 20,
                    self.memory_max_bytes >> 20,
                    self.over_memory
                ));
            }
        } else {
            self.over_memory = 0;
        }
        if self.cpu_max_percent == 0 {
            return None;
        }
        self.samples.push_back(s);
        // Keep one sample at or before the window's start.
        while self.samples.len() > 2 && s.at.duration_since(self.samples[1].at) >= self.cpu_window {
            self.samples.pop_front();
        }
        let first = *self.samples.front()?;
        let span = s.at.duration_since(first.at);
        if span < self.cpu_window {
            return None;
        }
        let used = s.cpu.saturating_sub(first.cpu);
        let percent = used.as_secs_f64() * 100.0 / span.as_secs_f64();
        (percent > f64::from(self.cpu_max_percent)).then(|| {
            format!(
                "over its cpu budget: {percent:.0}% of a core over the last {}, over watchdog.cpu_max_percent = {}",
                humantime::format_duration(Duration::from_secs(span.as_secs())),
                self.cpu_max_percent
            )
        })
    }
}

/// The worker's resident memory and cpu time, from /proc.
#[cfg(target_os = "linux")]
pub fn sample(pid: u32) -> std::io::Result<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted after its closing one (field 3 is the state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("unexpected /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let ticks = field(14) + field(15);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Ok(Sample {
        at,
        rss_bytes: pages * page,
        cpu: Duration::from_millis(ticks * 1000 / hz),
    })
}

#[cfg(not(target_os = "linux"))]
pub fn sample(_pid: u32) -> std::io::Result<Sample> {
    Err(std::io::Error::other("no /proc on this platform"))
}

/// How a worker ended.
enum Ended {
    /// It exited by itself: why, in words.
    Exited(String),
    /// Stopped by the watchdog for going over its budget.
    OverBudget(String),
    /// The watchdog is stopping.
    Shutdown,
}

/// Runs the watchdog until SIGTERM or SIGINT: starts `worker_args` of this
/// executable as the worker, and again whenever it ends.
pub async fn supervise(cfg: &WatchdogConfig, worker_args: Vec<OsString>) -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("the watchdog cannot find its own executable: {e}"))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::stop_on_signal(shutdown.clone()));
    let mut backoff = cfg.backoff_initial;
    let mut restart: Option<Restart> = None;
    let mut restarts = 0u32;
    tracing::info!(
        pid = std::process::id(),
        "gse-agent watchdog starting its worker"
    );
    loop {
        let started = Instant::now();
        let mut child = spawn(&exe, &worker_args, restart.as_ref())?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(worker = pid, "worker started");
        let ended = watch(cfg, &mut child, &shutdown).await;
        let reason = match ended {
            Ended::Shutdown => {
                tracing::info!("gse-agent watchdog stopped");
                return Ok(());
            }
            Ended::Exited(why) => {
                tracing::error!(worker = pid, reason = %why, "the worker ended; starting it again after a back-off");
                format!("crashed: {why}")
            }
            Ended::OverBudget(why) => {
                tracing::error!(worker = pid, reason = %why, "the worker was stopped; starting it again after a back-off");
                why
            }
        };
        // One back-off for both: a worker that cannot stay up (or under
        // its budget) is not restarted in a tight loop.
        if started.elapsed() >= cfg.stable_after {
            backoff = cfg.backoff_initial;
        }
        let wait = backoff + backoff.mul_f64(rand::random::<f64>() * 0.2);
        backoff = (backoff * 2).min(cfg.backoff_max);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        restarts += 1;
        restart = Some(Restart {
            reason,
            at_ms: gse_core::now_ms(),
            restarts,
        });
    }
}

/// Starts the worker; it learns why it was restarted from [`RESTART_ENV`].
fn spawn(exe: &Path, args: &[OsString], restart: Option<&Restart>) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args).kill_on_drop(false);
    match restart {
        Some(r) => cmd.env(RESTART_ENV, serde_json::to_string(r)?),
        None => cmd.env_remove(RESTART_ENV),
    };
    cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "the watchdog cannot start its worker {}: {e}",
            exe.display()
        )
    })
}

/// Watches the worker until it ends, goes over budget, or the watchdog
/// is asked to stop.
async fn watch(
    cfg: &WatchdogConfig,
    child: &mut Child,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Ended {
    let pid = child.id().unwrap_or(0);
    let mut budget = Budget::new(cfg);
    let mut tick = tokio::time::interval(cfg.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            status = child.wait() => {
                return Ended::Exited(match status {
                    Ok(st) => describe(st),
                    Err(e) => format!("cannot wait for it: {e}"),
                });
            }
            _ = shutdown.cancelled() => {
                stop(child, cfg.stop_grace).await;
                return Ended::Shutdown;
            }
            _ = tick.tick() => {
                let Ok(s) = sample(pid) else { continue };
                if let Some(why) = budget.check(s) {
                    stop(child, cfg.stop_grace).await;
                    return Ended::OverBudget(why);
                }
            }
        }
    }
}

/// SIGTERM to the worker, SIGKILL after `grace`; reaped either way.
async fn stop(child: &mut Child, grace: Duration) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            worker = pid,
            ?grace,
            "the worker did not stop in time; killing it"
        );
    }
    // Windows has no SIGTERM: the worker is ended at once.
    #[cfg(not(unix))]
    let _ = grace;
    let _ = child.kill().await;
}

/// A worker's exit status in words.
fn describe(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            return format!("the worker was killed by signal {sig} ({name})");
        }
    }
    match status.code() {
        Some(code) => format!("the worker exited with status {code}"),
        None => "the worker ended".to_string(),
    }
}

/// In a worker: cancels `shutdown` once its watchdog (the parent it was
/// started by) is gone, so no worker runs unsupervised.
pub fn watch_parent(shutdown: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    {
        let parent = nix::unistd::getppid();
        std::thread::Builder::new()
            .name("watchdog-parent".into())
            .spawn(move || {
                while !shutdown.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(500));
                    if nix::unistd::getppid() != parent {
                        tracing::error!("the watchdog that started this worker is gone; stopping");
                        shutdown.cancel();
                        return;
                    }
                }
            })
            .expect("a thread for the watchdog check");
    }
    // Without getppid the worker cannot tell; it stops with its service.
    #[cfg(not(unix))]
    let _ = shutdown;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(memory_mb: u64, cpu: u32) -> WatchdogConfig {
        WatchdogConfig {
            memory_max_mb: memory_mb,
            memory_checks: 3,
            cpu_max_percent: cpu,
            cpu_window: Duration::from_secs(10),
            ..WatchdogConfig::default()
        }
    }

    fn at(t0: Instant, secs: u64, rss_mb: u64, cpu_ms: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_secs(secs),
            rss_bytes: rss_mb << 20,
            cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn memory_over_budget_for_checks_in_a_row_and_only_then() {
        let mut b = Budget::new(&cfg(100, 0));
        let t0 = Instant::now();
        assert_eq!(b.check(at(t0, 0, 150, 0)), None);
        assert_eq!(b.check(at(t0, 1, 150, 0)), None);
        // Back under: the count starts over.
        assert_eq!(b.check(at(t0, 2, 90, 0)), None);
        assert_eq!(b.check(at(t0, 3, 150, 0)), None);
        assert_eq!(b.check(at(t0, 4, 150, 0)), None);
        let why = b.check(at(t0, 5, 150, 0)).expect("third in a row");
        assert!(
            why.contains("150 MiB resident, over watchdog.memory_max_mb = 100"),
            "{why}"
        );
        let mut none = Budget::new(&cfg(0, 0));
        assert_eq!(none.check(at(t0, 0, 1 << 20, 0)), None, "0 = no limit");
    }

    #[test]
    fn cpu_is_averaged_over_the_window() {
        let mut b = Budget::new(&cfg(0, 50));
        let t0 = Instant::now();
        // 80% of a core for 5 s: not a whole window yet.
        for s in 0..=5 {
            assert_eq!(b.check(at(t0, s, 10, s * 800)), None);
        }
        // Idle for the next 5 s: 40% over 10 s.
        for s in 6..=10 {
            assert_eq!(b.check(at(t0, s, 10, 4000)), None, "second {s}");
        }
        // Busy again: the window slides over 100% seconds.
        let mut over = None;
        for s in 11..=20 {
            over = over.or(b.check(at(t0, s, 10, 4000 + (s - 10) * 1000)));
        }
        let why = over.expect("over 50% over a 10 s window");
        assert!(why.contains("over watchdog.cpu_max_percent = 50"), "{why}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 1 << 20, "{s:?}");
    }

    #[test]
    fn the_restart_reason_travels_as_json() {
        let r = Restart {
            reason: "crashed: the worker was killed by signal 9 (SIGKILL)".into(),
            at_ms: 1,
            restarts: 2,
        };
        let back: Restart = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

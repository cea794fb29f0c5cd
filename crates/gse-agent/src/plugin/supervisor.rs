//! One plugin's state machine: the operations of `operate_proc_multi` and
//! the periodic check of a hosted plugin.
//!
//! [`PluginState`] is owned by one task at a time (the plugin's async
//! mutex), so an operation and a check never interleave. A hosted plugin
//! found dead is started again at once, then every `start_interval` while
//! its restarts keep failing; after `start_retries` failures in a row the
//! supervisor gives up and asks for an alarm ([`Checked::gave_up`]). A
//! plugin over its resource limits is killed and goes the same way
//! ([`super::limits`]). Reading the pid: the pid file wins when it names a
//! live process; otherwise the pid seen last, if that same process is
//! still alive.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{LimitTracker, Usage, Verdict};
use super::process::{self, Proc};
use super::spec::*;
use super::state_file::SavedPlugin;

/// Longest wait for a plugin's `version_cmd`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest version string kept.
const MAX_VERSION_CHARS: usize = 64;

/// The live state of one plugin.
#[derive(Clone, Debug)]
pub struct PluginState {
    pub id: PluginId,
    pub spec: PluginSpec,
    pub hosted: bool,
    /// The process last seen alive.
    pub proc: Option<Proc>,
    pub failed_restarts: u32,
    pub gave_up: bool,
    pub version: String,
    /// When a dead hosted plugin may be started next.
    pub next_restart: Option<Instant>,
    pub limits: LimitTracker,
    pub usage: Usage,
    /// Where control commands write (see [`process`]).
    pub log: PathBuf,
}

/// The answer to one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpOutcome {
    pub code: i32,
    pub message: String,
}

impl OpOutcome {
    fn ok() -> Self {
        OpOutcome {
            code: CODE_OK,
            message: "success".into(),
        }
    }

    fn new(code: i32, message: impl Into<String>) -> Self {
        OpOutcome {
            code,
            message: message.into(),
        }
    }
}

/// What a periodic check did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The plugin was restarted (or a restart was tried).
    pub restarted: bool,
    /// This check made the supervisor give up: raise the alarm with this text.
    pub gave_up: Option<String>,
}

// === impl PluginState ===

impl PluginState {
    pub fn new(id: PluginId, spec: PluginSpec, log: PathBuf) -> Self {
        PluginState {
            id,
            spec,
            hosted: false,
            proc: None,
            failed_restarts: 0,
            gave_up: false,
            version: String::new(),
            next_restart: None,
            limits: LimitTracker::default(),
            usage: Usage::default(),
            log,
        }
    }

    /// A plugin saved by an earlier run, re-adopted if its process still
    /// runs.
    pub fn restore(saved: SavedPlugin, log: PathBuf) -> Self {
        let mut st = PluginState::new(saved.id, saved.spec, log);
        st.hosted = saved.hosted;
        st.failed_restarts = saved.failed_restarts;
        st.gave_up = saved.gave_up;
        st.version = saved.version;
        st.proc = saved.pid.map(|pid| Proc {
            pid,
            start_ticks: saved.start_ticks,
        });
        st.refresh();
        st
    }

    pub fn to_saved(&self) -> SavedPlugin {
        SavedPlugin {
            id: self.id.clone(),
            spec: self.spec.clone(),
            hosted: self.hosted,
            pid: self.proc.map(|p| p.pid),
            start_ticks: self.proc.and_then(|p| p.start_ticks),
            failed_restarts: self.failed_restarts,
            gave_up: self.gave_up,
            version: self.version.clone(),
        }
    }

    /// Re-reads the pid; returns the live process, if any.
    pub fn refresh(&mut self) -> Option<Proc> {
        let from_file = self
            .spec
            .pid_file()
            .and_then(process::read_pid_file)
            .and_then(process::probe);
        self.proc = match (from_file, self.proc) {
            // The pid we knew, but a different process now: reused.
            (Some(f), Some(known)) if f.pid == known.pid => {
                Some(known).filter(|k| process::still_alive(*k))
            }
            (Some(f), _) => Some(f),
            (None, Some(known)) => Some(known).filter(|k| process::still_alive(*k)),
            (None, None) => None,
        };
        self.proc
    }

    /// `status` of the process APIs: 1 running, 2 stopped.
    pub fn status(&self) -> u32 {
        if self.proc.is_some() {
            STATUS_RUNNING
        } else {
            STATUS_STOPPED
        }
    }

    /// Runs one operation.
    pub async fn operate(&mut self, op: OpType) -> OpOutcome {
        match op {
            OpType::Start => self.start().await,
            OpType::Stop => self.stop().await,
            OpType::Status => {
                self.refresh();
                OpOutcome::ok()
            }
            OpType::Delegate => {
                self.host();
                self.refresh();
                OpOutcome::ok()
            }
            OpType::Undelegate => {
                self.hosted = false;
                self.refresh();
                OpOutcome::ok()
            }
            OpType::Restart => self.restart().await,
            OpType::Reload => self.reload().await,
            OpType::Kill => self.kill_op().await,
        }
    }

    /// Hosts the plugin from now on, with a fresh restart budget.
    fn host(&mut self) {
        self.hosted = self.spec.auto_type != 2;
        self.gave_up = false;
        self.failed_restarts = 0;
        self.next_restart = None;
    }

    async fn start(&mut self) -> OpOutcome {
        self.host();
        if let Some(p) = self.refresh() {
            return OpOutcome::new(
                CODE_ALREADY_RUNNING,
                format!("{} is already running (pid {})", self.id, p.pid),
            );
        }
        self.launch(OpType::Start).await
    }

    /// Runs `op`'s command, waits `start_check`, and says whether the
    /// plugin is alive.
    async fn launch(&mut self, op: OpType) -> OpOutcome {
        let Some(cmd) = self.spec.command(op).map(str::to_string) else {
            return OpOutcome::new(
                CODE_FAILED,
                format!(
                    "{} has no {}_cmd in spec.control; nothing to run",
                    self.id,
                    op.as_str()
                ),
            );
        };
        let out = process::run_command(&self.spec, &cmd, &self.log).await;
        if !out.success() {
            self.refresh();
            return OpOutcome::new(CODE_FAILED, out.describe(&format!("{}_cmd", op.as_str())));
        }
        tokio::time::sleep(self.spec.start_check).await;
        match self.refresh() {
            Some(_) => {
                self.read_version().await;
                OpOutcome::ok()
            }
            None => OpOutcome::new(
                CODE_NOT_ALIVE,
                format!(
                    "{} is not alive {}s after {}_cmd (pid_path {:?}); see {}",
                    self.id,
                    self.spec.start_check.as_secs(),
                    op.as_str(),
                    self.spec.pid_path,
                    self.log.display()
                ),
            ),
        }
    }

    async fn stop(&mut self) -> OpOutcome {
        self.hosted = false;
        self.gave_up = false;
        self.failed_restarts = 0;
        let Some(p) = self.refresh() else {
            return OpOutcome::new(CODE_NOT_RUNNING, format!("{} is not running", self.id));
        };
        let said = match self.spec.command(OpType::Stop).map(str::to_string) {
            Some(cmd) => {
                let out = process::run_command(&self.spec, &cmd, &self.log).await;
                (!out.success()).then(|| out.describe("stop_cmd"))
            }
            None => process::kill(p.pid).err(),
        };
        if process::wait_gone(p, self.spec.stop_check).await {
            self.proc = None;
            return OpOutcome::ok();
        }
        let why = said.unwrap_or_else(|| {
            format!(
                "{} (pid {}) is still running {}s after stop_cmd",
                self.id,
                p.pid,
                self.spec.stop_check.as_secs()
            )
        });
        OpOutcome::new(CODE_FAILED, why)
    }

    async fn restart(&mut self) -> OpOutcome {
        self.host();
        if self.spec.command(OpType::Restart).is_some() {
            return self.launch(OpType::Restart).await;
        }
        // No restart_cmd: stop (if running) and start.
        if self.refresh().is_some() {
            let stopped = self.stop().await;
            self.host();
            if stopped.code != CODE_OK {
                return stopped;
            }
        }
        self.launch(OpType::Start).await
    }

    async fn reload(&mut self) -> OpOutcome {
        self.launch(OpType::Reload).await
    }

    async fn kill_op(&mut self) -> OpOutcome {
        self.hosted = false;
        let Some(p) = self.refresh() else {
            return OpOutcome::ok();
        };
        if let Some(cmd) = self.spec.command(OpType::Kill).map(str::to_string) {
            let _ = process::run_command(&self.spec, &cmd, &self.log).await;
        }
        if process::still_alive(p)
            && let Err(e) = process::kill(p.pid)
        {
            return OpOutcome::new(CODE_FAILED, e);
        }
        if process::wait_gone(p, self.spec.stop_check).await {
            self.proc = None;
            OpOutcome::ok()
        } else {
            OpOutcome::new(
                CODE_FAILED,
                format!("{} (pid {}) survived SIGKILL", self.id, p.pid),
            )
        }
    }

    /// Runs `version_cmd` (if any) and keeps the first line it prints.
    async fn read_version(&mut self) {
        let Some(cmd) = Some(self.spec.version_cmd.clone()).filter(|c| !c.trim().is_empty()) else {
            return;
        };
        let mut spec = self.spec.clone();
        spec.op_timeout = spec.op_timeout.min(VERSION_TIMEOUT);
        let out = process::run_command(&spec, &cmd, &self.log).await;
        if out.success() {
            let line = out.output.lines().find(|l| !l.trim().is_empty());
            self.version = line
                .unwrap_or_default()
                .trim()
                .chars()
                .take(MAX_VERSION_CHARS)
                .collect();
        }
    }

    /// One periodic check: notices a death or a limit breach, restarts a
    /// hosted plugin when its backoff allows. `usage` is this check's
    /// sample, if the plugin was sampled; `limit_samples` is the config's.
    pub async fn check(&mut self, usage: Option<Usage>, limit_samples: u32) -> Checked {
        let mut done = Checked::default();
        let alive = self.refresh();
        if !self.hosted {
            return done;
        }
        if let (Some(p), Some(u)) = (alive, usage) {
            self.usage = u;
            if let Verdict::Kill(why) = self.limits.observe(u, &self.spec, limit_samples) {
                tracing::warn!(plugin = %self.id, pid = p.pid, reason = %why, "plugin over its resource limit; killing it to restart it");
                if let Err(e) = process::kill(p.pid) {
                    tracing::warn!(plugin = %self.id, error = %e, "cannot kill the plugin");
                }
                process::wait_gone(p, Duration::from_secs(2)).await;
                self.proc = None;
                self.next_restart = None;
            }
        }
        if self.proc.is_some() || self.gave_up {
            return done;
        }
        if self.next_restart.is_some_and(|at| Instant::now() < at) {
            return done;
        }
        done.restarted = true;
        let outcome = self.launch(OpType::Start).await;
        if outcome.code == CODE_OK {
            tracing::info!(plugin = %self.id, pid = self.proc.map(|p| p.pid), "hosted plugin restarted");
            self.failed_restarts = 0;
            self.next_restart = None;
            return done;
        }
        self.failed_restarts += 1;
        self.next_restart = Some(Instant::now() + self.spec.start_interval);
        tracing::warn!(plugin = %self.id, failed = self.failed_restarts, retries = self.spec.start_retries, reason = %outcome.message, "hosted plugin failed to restart");
        if self.failed_restarts >= self.spec.start_retries {
            self.gave_up = true;
            done.gave_up = Some(format!(
                "plugin {} failed to restart {} times in a row; the agent stopped restarting it (last error: {})",
                self.id, self.failed_restarts, outcome.message
            ));
        }
        done
    }
}

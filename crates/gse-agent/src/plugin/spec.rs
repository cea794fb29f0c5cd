//! What the supervisor knows about a plugin: its identity, its control
//! commands and policy ([`PluginSpec`], from `ProcSpec` on the wire), the
//! operations ([`OpType`]) and the result codes of COMPAT §2.2.
//!
//! Specs come from the network, so [`PluginSpec::from_wire`] checks every
//! field before anything runs: paths absolute and free of `..`, commands
//! present for the operation that needs them, bounded sizes, and timings
//! clamped to sane ranges.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use gse_proto::link::ProcSpec;
use serde::{Deserialize, Serialize};

/// Operation succeeded.
pub const CODE_OK: i32 = 0;
/// START of a plugin that is already running.
pub const CODE_ALREADY_RUNNING: i32 = 828;
/// STOP of a plugin that is not running.
pub const CODE_NOT_RUNNING: i32 = 829;
/// An op type this agent does not know.
pub const CODE_UNKNOWN_OP: i32 = 832;
/// The plugin was not alive after `start_check_secs`.
pub const CODE_NOT_ALIVE: i32 = 836;
/// Anything else that failed.
pub const CODE_FAILED: i32 = 65535;

/// `status` values of the process APIs.
pub const STATUS_UNREGISTERED: u32 = 0;
pub const STATUS_RUNNING: u32 = 1;
pub const STATUS_STOPPED: u32 = 2;

/// Longest command, path or name taken from the network.
const MAX_FIELD_BYTES: usize = 4096;
/// Longest wait for any one control command.
const MAX_OP_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest start check.
const MAX_CHECK: Duration = Duration::from_secs(300);

/// A plugin's name on this agent: `namespace` and `name` (nodeman's
/// `meta`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PluginId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// The operations of `operate_proc_multi` (COMPAT §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpType {
    Start,
    Stop,
    Status,
    Delegate,
    Undelegate,
    Restart,
    Reload,
    Kill,
}

impl OpType {
    /// The op for a wire number; `None` answers [`CODE_UNKNOWN_OP`].
    pub fn from_wire(n: u32) -> Option<Self> {
        Some(match n {
            0 => OpType::Start,
            1 => OpType::Stop,
            2 => OpType::Status,
            3 => OpType::Delegate,
            4 => OpType::Undelegate,
            7 => OpType::Restart,
            8 => OpType::Reload,
            9 => OpType::Kill,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpType::Start => "start",
            OpType::Stop => "stop",
            OpType::Status => "status",
            OpType::Delegate => "delegate",
            OpType::Undelegate => "undelegate",
            OpType::Restart => "restart",
            OpType::Reload => "reload",
            OpType::Kill => "kill",
        }
    }
}

/// A checked plugin spec. Timings are already defaulted and clamped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginSpec {
    pub proc_name: String,
    pub setup_path: PathBuf,
    /// Where the plugin writes its pid; empty = none (liveness then follows
    /// the pid the supervisor last saw).
    pub pid_path: PathBuf,
    /// Run the commands as this user; empty = as the agent.
    pub user: String,
    pub start_cmd: String,
    pub stop_cmd: String,
    pub restart_cmd: String,
    pub reload_cmd: String,
    pub kill_cmd: String,
    pub version_cmd: String,
    /// Percent of the host; 0 = no limit.
    pub cpu_limit: f64,
    pub mem_limit: f64,
    /// 0 periodic, 1 resident, 2 single execution.
    pub auto_type: u32,
    #[serde(with = "humantime_serde")]
    pub start_check: Duration,
    #[serde(with = "humantime_serde")]
    pub stop_check: Duration,
    pub start_retries: u32,
    #[serde(with = "humantime_serde")]
    pub start_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why a spec from the server cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.identity.{field} is {what}; send an absolute path without '..'")]
    BadPath { field: &'static str, what: String },
    #[error("spec.{field} is over {MAX_FIELD_BYTES} bytes")]
    TooLong { field: &'static str },
    #[error("meta.{0} is empty or has characters outside [A-Za-z0-9._-]")]
    BadName(&'static str),
    #[error("spec.identity.proc_name is empty; name the plugin's binary")]
    NoProcName,
}

// === impl PluginSpec ===

impl PluginSpec {
    /// Checks a spec from the server; `labels` are the op's meta labels.
    pub fn from_wire(w: &ProcSpec, labels: BTreeMap<String, String>) -> Result<Self, SpecError> {
        for (field, value) in [
            ("identity.proc_name", &w.proc_name),
            ("identity.setup_path", &w.setup_path),
            ("identity.pid_path", &w.pid_path),
            ("identity.user", &w.user),
            ("control.start_cmd", &w.start_cmd),
            ("control.stop_cmd", &w.stop_cmd),
            ("control.restart_cmd", &w.restart_cmd),
            ("control.reload_cmd", &w.reload_cmd),
            ("control.kill_cmd", &w.kill_cmd),
            ("control.version_cmd", &w.version_cmd),
        ] {
            if value.len() > MAX_FIELD_BYTES {
                return Err(SpecError::TooLong { field });
            }
        }
        if w.proc_name.trim().is_empty() {
            return Err(SpecError::NoProcName);
        }
        let setup_path = checked_path("setup_path", &w.setup_path, false)?;
        let pid_path = checked_path("pid_path", &w.pid_path, true)?;
        let secs = |n: u32, default: u64, max: Duration| {
            let d = if n == 0 {
                Duration::from_secs(default)
            } else {
                Duration::from_secs(u64::from(n))
            };
            d.min(max)
        };
        Ok(PluginSpec {
            proc_name: w.proc_name.trim().to_string(),
            setup_path,
            pid_path,
            user: w.user.trim().to_string(),
            start_cmd: w.start_cmd.clone(),
            stop_cmd: w.stop_cmd.clone(),
            restart_cmd: w.restart_cmd.clone(),
            reload_cmd: w.reload_cmd.clone(),
            kill_cmd: w.kill_cmd.clone(),
            version_cmd: w.version_cmd.clone(),
            cpu_limit: limit(w.cpu_limit_percent),
            mem_limit: limit(w.mem_limit_percent),
            auto_type: w.auto_type.min(2),
            start_check: secs(w.start_check_secs, 5, MAX_CHECK),
            stop_check: secs(w.stop_check_secs, 5, MAX_CHECK),
            start_retries: if w.start_retries == 0 {
                4
            } else {
                w.start_retries.min(1000)
            },
            start_interval: secs(w.start_interval_secs, 10, Duration::from_secs(3600)),
            op_timeout: secs(w.op_timeout_secs, 60, MAX_OP_TIMEOUT),
            labels,
        })
    }

    /// The command of `op`, with RELOAD falling back to RESTART (COMPAT
    /// §4.3); `None` when the spec has none.
    pub fn command(&self, op: OpType) -> Option<&str> {
        let cmd = match op {
            OpType::Start => &self.start_cmd,
            OpType::Stop => &self.stop_cmd,
            OpType::Restart => &self.restart_cmd,
            OpType::Reload if self.reload_cmd.trim().is_empty() => &self.restart_cmd,
            OpType::Reload => &self.reload_cmd,
            OpType::Kill => &self.kill_cmd,
            _ => return None,
        };
        Some(cmd.as_str()).filter(|c| !c.trim().is_empty())
    }

    /// `pid_path`, when the spec has one.
    pub fn pid_file(&self) -> Option<&Path> {
        Some(self.pid_path.as_path()).filter(|p| !p.as_os_str().is_empty())
    }
}

/// Checks a plugin's namespace or name (they name files and result keys).
pub fn check_name(field: &'static str, s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName(field))
    }
}

/// A resource limit: a percent in (0, 100], anything else = none.
fn limit(p: f64) -> f64 {
    if p.is_finite() && p > 0.0 {
        p.min(100.0)
    } else {
        0.0
    }
}

fn checked_path(field: &'static str, s: &str, optional: bool) -> Result<PathBuf, SpecError> {
    let s = s.trim();
    if s.is_empty() {
        return if optional {
            Ok(PathBuf::new())
        } else {
            Err(SpecError::BadPath {
                field,
                what: "empty".into(),
            })
        };
    }
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(SpecError::BadPath {
            field,
            what: format!("{s:?}, not absolute"),
        });
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(SpecError::BadPath {
            field,
            what: format!("{s:?}, which contains '..'"),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> ProcSpec {
        ProcSpec {
            proc_name: "beat".into(),
            setup_path: "/opt/beat".into(),
            pid_path: "/opt/beat/beat.pid".into(),
            start_cmd: "./start.sh".into(),
            restart_cmd: "./restart.sh".into(),
            ..Default::default()
        }
    }

    #[test]
    fn op_types_follow_nodeman() {
        for (n, op) in [
            (0, OpType::Start),
            (1, OpType::Stop),
            (2, OpType::Status),
            (3, OpType::Delegate),
            (4, OpType::Undelegate),
            (7, OpType::Restart),
            (8, OpType::Reload),
            (9, OpType::Kill),
        ] {
            assert_eq!(OpType::from_wire(n), Some(op));
        }
        for n in [5, 6, 10, 99] {
            assert_eq!(OpType::from_wire(n), None, "{n}");
        }
    }

    #[test]
    fn defaults_follow_nodeman_and_reload_falls_back_to_restart() {
        let spec = PluginSpec::from_wire(&wire(), BTreeMap::new()).unwrap();
        assert_eq!(spec.start_check, Duration::from_secs(5));
        assert_eq!(spec.start_retries, 4);
        assert_eq!(spec.start_interval, Duration::from_secs(10));
        assert_eq!(spec.op_timeout, Duration::from_secs(60));
        assert_eq!(spec.command(OpType::Reload), Some("./restart.sh"));
        assert_eq!(spec.command(OpType::Stop), None);
        assert_eq!(spec.cpu_limit, 0.0);
    }

    #[test]
    fn unsafe_paths_and_names_are_refused() {
        let mut w = wire();
        w.setup_path = "opt/beat".into();
        assert!(matches!(
            PluginSpec::from_wire(&w, BTreeMap::new()),
            Err(SpecError::BadPath {
                field: "setup_path",
                ..
            })
        ));
        let mut w = wire();
        w.pid_path = "/opt/../etc/passwd".into();
        assert!(PluginSpec::from_wire(&w, BTreeMap::new()).is_err());
        let mut w = wire();
        w.proc_name = " ".into();
        assert_eq!(
            PluginSpec::from_wire(&w, BTreeMap::new()),
            Err(SpecError::NoProcName)
        );
        assert!(check_name("name", "bk-beat_1.x").is_ok());
        assert!(check_name("name", "../x").is_err());
        assert!(check_name("name", "").is_err());
    }

    #[test]
    fn limits_are_clamped() {
        let mut w = wire();
        w.cpu_limit_percent = 250.0;
        w.mem_limit_percent = f64::NAN;
        w.start_check_secs = 100_000;
        let spec = PluginSpec::from_wire(&w, BTreeMap::new()).unwrap();
        assert_eq!(spec.cpu_limit, 100.0);
        assert_eq!(spec.mem_limit, 0.0);
        assert_eq!(spec.start_check, MAX_CHECK);
    }
}

//! The OS side of plugin control: running a control command, reading a pid
//! file, telling whether a pid is alive, and killing it.
//!
//! A control command runs under `/bin/sh -c` in the plugin's `setup_path`,
//! as the spec's user (the executor's user switch: groups, gid, uid), in a
//! process group of its own, bounded by `op_timeout` (then the group is
//! killed). Its stdout and stderr go to the plugin's control log
//! (`<data_dir>/plugins/<namespace>.<name>.log`), not to a pipe: start
//! scripts leave daemons behind that inherit those descriptors, and a pipe
//! the agent stops reading would kill them with SIGPIPE. What a command
//! printed is read back from the log for the operation's `error_msg`. The
//! log is emptied when it grows past [`MAX_LOG_BYTES`].
//!
//! Liveness is by pid; on Linux a zombie (or a pid reused by another
//! program, seen by its start time) counts as dead.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spec::PluginSpec;

/// The control log is emptied before a command when it is larger.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// At most this much of a command's output is kept for its result.
const MAX_OUTPUT_BYTES: u64 = 2048;
/// Largest pid file read.
const MAX_PID_FILE_BYTES: u64 = 64;

/// How a control command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdExit {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    /// It could not be started; the text says why.
    SpawnFailed(String),
}

/// A finished control command.
#[derive(Clone, Debug)]
pub struct CmdOutcome {
    pub exit: CmdExit,
    /// The tail of what it printed (stdout and stderr), lossy UTF-8.
    pub output: String,
}

impl CmdOutcome {
    pub fn success(&self) -> bool {
        self.exit == CmdExit::Exited(0)
    }

    /// One line for an error message: how it ended and what it said.
    pub fn describe(&self, what: &str) -> String {
        let how = match &self.exit {
            CmdExit::Exited(c) => format!("{what} exited with code {c}"),
            CmdExit::Signaled(s) => format!("{what} was killed by signal {s}"),
            CmdExit::TimedOut => format!("{what} did not finish within op_timeout and was killed"),
            CmdExit::SpawnFailed(why) => format!("{what} could not be started: {why}"),
        };
        let said = self.output.trim();
        if said.is_empty() {
            how
        } else {
            format!("{how}; output: {said}")
        }
    }
}

/// Where a plugin's control commands write.
pub fn control_log(data_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    data_dir
        .join("plugins")
        .join(format!("{namespace}.{name}.log"))
}

/// Runs `cmd` for the plugin `spec`, waiting at most `spec.op_timeout`.
pub async fn run_command(spec: &PluginSpec, cmd: &str, log: &Path) -> CmdOutcome {
    let prepared = match prepare_log(log) {
        Ok(p) => p,
        Err(e) => {
            return CmdOutcome {
                exit: CmdExit::SpawnFailed(format!(
                    "cannot open the control log {}: {e}",
                    log.display()
                )),
                output: String::new(),
            };
        }
    };
    let (file, offset) = prepared;
    let exit = platform::run(spec, cmd, file, spec.op_timeout).await;
    CmdOutcome {
        exit,
        output: read_tail(log, offset),
    }
}

/// Opens (creating, or emptying when too large) the control log; returns
/// it and where this command's output starts.
fn prepare_log(log: &Path) -> std::io::Result<(std::fs::File, u64)> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut len = file.metadata()?.len();
    if len > MAX_LOG_BYTES {
        file.set_len(0)?;
        len = 0;
    }
    Ok((file, len))
}

/// What was written to `log` after `offset`, at most the last
/// [`MAX_OUTPUT_BYTES`].
fn read_tail(log: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = offset.max(len.saturating_sub(MAX_OUTPUT_BYTES));
    if from >= len || f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX_OUTPUT_BYTES).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The pid written in `path`, if it holds one.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_PID_FILE_BYTES).read_to_string(&mut text).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    (pid > 1).then_some(pid)
}

/// A live process: its pid and, where the OS tells, when it started (to
/// tell a reused pid from the plugin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start_ticks: Option<u64>,
}

/// Whether `pid` is a live (not zombie) process; with `start_ticks`, also
/// that it is the same process as before.
pub fn probe(pid: u32) -> Option<Proc> {
    platform::probe(pid)
}

/// Whether `p` is still the process it was.
pub fn still_alive(p: Proc) -> bool {
    match probe(p.pid) {
        Some(now) => p.start_ticks.is_none() || now.start_ticks == p.start_ticks,
        None => false,
    }
}

/// Sends SIGKILL to `pid` (the plugin, not the agent's own children).
pub fn kill(pid: u32) -> Result<(), String> {
    platform::kill(pid)
}

/// Waits up to `within` for `p` to be gone; true if it is.
pub async fn wait_gone(p: Proc, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !still_alive(p) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(unix)]
mod platform {
    use std::process::Stdio;
    use std::time::Duration;

    use nix::sys::signal::{Signal, kill as send, killpg};
    use nix::unistd::Pid;
    use tokio::process::Command;

    use super::{CmdExit, PluginSpec, Proc};

    pub async fn run(spec: &PluginSpec, cmd: &str, log: std::fs::File, limit: Duration) -> CmdExit {
        let mut command = match build(spec, cmd, log).await {
            Ok(c) => c,
            Err(why) => return CmdExit::SpawnFailed(why),
        };
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => return CmdExit::SpawnFailed(spawn_error(spec, &e)),
        };
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(c), _) => CmdExit::Exited(c),
                    (None, Some(s)) => CmdExit::Signaled(s),
                    (None, None) => CmdExit::Exited(-1),
                }
            }
            Ok(Err(e)) => CmdExit::SpawnFailed(format!("cannot wait for the command: {e}")),
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                let _ = child.kill().await;
                CmdExit::TimedOut
            }
        }
    }

    /// `/bin/sh -c cmd` in `setup_path`, as the spec's user, output to the
    /// control log, in a new process group.
    async fn build(spec: &PluginSpec, cmd: &str, log: std::fs::File) -> Result<Command, String> {
        if !spec.setup_path.is_dir() {
            return Err(format!(
                "setup_path {} is not a directory on this host",
                spec.setup_path.display()
            ));
        }
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot share the control log: {e}"))?;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(cmd)
            .current_dir(&spec.setup_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0);
        if !spec.user.is_empty() {
            let name = spec.user.clone();
            let user = tokio::task::spawn_blocking(move || crate::task::user::resolve(&name))
                .await
                .map_err(|e| format!("user lookup failed: {e}"))?
                .map_err(|e| e.to_string())?;
            command
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
            if crate::executor::needs_switch(&user) {
                crate::executor::switch_user(&mut command, &user);
            }
        }
        Ok(command)
    }

    fn spawn_error(spec: &PluginSpec, e: &std::io::Error) -> String {
        if spec.user.is_empty() {
            format!("cannot start /bin/sh: {e}")
        } else {
            format!(
                "cannot start the command as user {:?}: {e} (running as another user needs the agent to run as root)",
                spec.user
            )
        }
    }

    #[cfg(target_os = "linux")]
    pub fn probe(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ... starttime(22nd field)"; comm may hold
        // spaces and parentheses, so split after its last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = *fields.first()?;
        if state == "Z" || state == "X" || state == "x" {
            return None;
        }
        let start_ticks = fields.get(19).and_then(|s| s.parse().ok());
        Some(Proc { pid, start_ticks })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn probe(pid: u32) -> Option<Proc> {
        match send(Pid::from_raw(pid as i32), None) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => Some(Proc {
                pid,
                start_ticks: None,
            }),
            Err(_) => None,
        }
    }

    pub fn kill(pid: u32) -> Result<(), String> {
        match send(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(format!("cannot kill pid {pid}: {e}")),
        }
    }
}

#[cfg(not(unix))]
mod platform {
    //! Plugin control is implemented for Unix only; on other platforms every
    //! command fails with a message that says so.
    use std::time::Duration;

    use super::{CmdExit, PluginSpec, Proc};

    pub async fn run(_: &PluginSpec, _: &str, _: std::fs::File, _: Duration) -> CmdExit {
        CmdExit::SpawnFailed("plugin control is not supported on this platform yet".into())
    }

    pub fn probe(_: u32) -> Option<Proc> {
        None
    }

    pub fn kill(pid: u32) -> Result<(), String> {
        Err(format!(
            "cannot kill pid {pid}: plugin control is not supported on this platform yet"
        ))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(dir: &Path) -> PluginSpec {
        let wire = gse_proto::link::ProcSpec {
            proc_name: "p".into(),
            setup_path: dir.display().to_string(),
            op_timeout_secs: 2,
            ..Default::default()
        };
        PluginSpec::from_wire(&wire, BTreeMap::new()).unwrap()
    }

    #[tokio::test]
    async fn a_command_runs_in_setup_path_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ctl.log");
        let out = run_command(&spec(dir.path()), "pwd; echo oops >&2; exit 3", &log).await;
        assert_eq!(out.exit, CmdExit::Exited(3));
        assert!(out.output.contains(&dir.path().display().to_string()));
        assert!(out.output.contains("oops"));
        // A second command reports only its own output.
        let out = run_command(&spec(dir.path()), "echo second", &log).await;
        assert!(out.success());
        assert_eq!(out.output.trim(), "second");
    }

    #[tokio::test]
    async fn a_command_over_op_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ctl.log");
        let started = std::time::Instant::now();
        let out = run_command(&spec(dir.path()), "sleep 30", &log).await;
        assert_eq!(out.exit, CmdExit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn pid_files_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("x.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let pid = read_pid_file(&pid_file).unwrap();
        let me = probe(pid).expect("this process is alive");
        assert!(still_alive(me));
        std::fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(read_pid_file(&pid_file), None);
        assert_eq!(read_pid_file(&dir.path().join("missing")), None);
        // A pid that was reused by another program is not the plugin.
        let reused = Proc {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me
        };
        if me.start_ticks.is_some() {
            assert!(!still_alive(reused));
        }
    }
}

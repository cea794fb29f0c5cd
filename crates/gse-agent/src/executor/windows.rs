//! Windows process setup (T2, T3). UNTESTED: no Windows target is built or
//! run in this project's CI yet; keep it simple enough to read as correct.
//!
//! Commands go to `cmd /C`. A command whose program is a `.ps1` file runs
//! through `powershell -ExecutionPolicy Bypass -File`; `.bat`/`.cmd` and
//! everything else go through cmd. The tree is killed with
//! `taskkill /T /F /PID` (a Job Object would also catch processes that were
//! re-parented; a later improvement). Running as a named user
//! (`LogonUserW` + `CreateProcessAsUserW`) is not implemented: such a
//! request fails to spawn with a message saying so.

use std::time::Duration;

use gse_core::seams::{ExecRequest, ExitKind};
use tokio::process::{Child, Command};

/// The command for `req`, or why it cannot run here.
pub fn try_build_command(req: &ExecRequest) -> Result<Command, String> {
    if let Some(user) = &req.user {
        return Err(format!(
            "running as user {:?} is not supported on Windows yet; leave the user empty",
            user.name
        ));
    }
    let (program, rest) = split_program(&req.command);
    let mut cmd;
    if program.to_ascii_lowercase().ends_with(".ps1") {
        cmd = Command::new("powershell");
        cmd.args([
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
        ])
        .arg(program.trim_matches('"'));
        cmd.raw_arg(rest);
    } else {
        cmd = Command::new("cmd");
        // raw_arg: cmd parses its own command line; std's quoting would
        // break commands that contain quotes.
        cmd.arg("/C").raw_arg(&req.command);
    }
    Ok(cmd)
}

/// Splits a command line into its program (possibly quoted) and the rest.
fn split_program(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    let end = if let Some(stripped) = line.strip_prefix('"') {
        stripped.find('"').map(|i| i + 2).unwrap_or(line.len())
    } else {
        line.find(char::is_whitespace).unwrap_or(line.len())
    };
    (&line[..end], line[end..].trim_start())
}

pub fn describe_spawn_error(_req: &ExecRequest, e: &std::io::Error) -> String {
    format!("cannot start cmd.exe: {e}")
}

/// Kills the process and all its descendants.
pub async fn kill_tree(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("taskkill")
            .args(["/T", "/F", "/PID", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
    let _ = child.kill().await;
}

pub fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    ExitKind::Exited(status.code().unwrap_or(-1))
}

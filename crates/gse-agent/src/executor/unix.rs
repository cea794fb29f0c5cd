//! Unix process setup: the shell line, the user switch, the environment,
//! and killing the process group.
//!
//! As a named user the child does `setgroups`, `setgid`, `setuid` itself in
//! `pre_exec`, with values resolved by the parent. std's `Command::uid()`
//! is not used: it drops supplementary groups, and `pre_exec` runs after it,
//! when `setgroups` is no longer permitted (DEPENDENCIES.md §7). If any of
//! the three calls fails, spawn fails: a task never runs as the agent's user
//! by accident.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gse_core::seams::ExecRequest;
use gse_core::seams::executor::RunAs;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use tokio::process::{Child, Command};

/// PATH given to a named user's process (the passwd entry has none).
const USER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Shell for users whose passwd entry names none.
const DEFAULT_SHELL: &str = "/bin/sh";

/// The command for `req`: `/bin/sh -c` as the agent, or as `req.user`
/// (through its login shell with `req.login_env`). Never fails on Unix; the
/// `Result` matches the Windows twin.
pub fn try_build_command(req: &ExecRequest) -> Result<Command, String> {
    Ok(build_command(req))
}

fn build_command(req: &ExecRequest) -> Command {
    let Some(user) = &req.user else {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&req.command);
        return cmd;
    };
    let shell = login_shell(user);
    let mut cmd = if req.login_env {
        let mut cmd = Command::new(&shell);
        // A clean slate: only what the login shell and profiles set.
        cmd.env_clear().arg("-l").arg("-c").arg(&req.command);
        cmd
    } else {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&req.command);
        cmd
    };
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &shell)
        .env("PATH", USER_PATH)
        .current_dir(working_dir(&user.home));
    if needs_switch(user) {
        switch_user(&mut cmd, user);
    }
    cmd
}

/// What a spawn failure means, with the user named when there was one.
pub fn describe_spawn_error(req: &ExecRequest, e: &std::io::Error) -> String {
    let Some(u) = &req.user else {
        return format!("cannot start /bin/sh: {e}");
    };
    let hint = if Uid::effective().is_root() {
        ""
    } else {
        " (running as another user needs the agent to run as root)"
    };
    format!(
        "cannot start the command as user {:?} (uid {}, gid {}, {} groups): {e}{hint}",
        u.name,
        u.uid,
        u.gid,
        u.groups.len()
    )
}

fn login_shell(user: &RunAs) -> PathBuf {
    if user.shell.as_os_str().is_empty() {
        PathBuf::from(DEFAULT_SHELL)
    } else {
        user.shell.clone()
    }
}

/// HOME when it exists (`nobody`'s `/nonexistent` does not), else `/`.
fn working_dir(home: &Path) -> PathBuf {
    if home.is_dir() {
        home.to_path_buf()
    } else {
        PathBuf::from("/")
    }
}

/// No switch when the agent already is that (non-root) user: it could not
/// call setgroups, and nothing would change. Root always switches, so the
/// groups are exactly the user's.
pub(crate) fn needs_switch(user: &RunAs) -> bool {
    let euid = Uid::effective();
    euid.is_root() || euid.as_raw() != user.uid || Gid::effective().as_raw() != user.gid
}

/// Makes the child take `user`'s groups, gid and uid before exec.
#[allow(unsafe_code)]
pub(crate) fn switch_user(cmd: &mut Command, user: &RunAs) {
    // Everything the child needs is computed here, in the parent.
    let groups: Vec<Gid> = user.groups.iter().copied().map(Gid::from_raw).collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    // SAFETY: the closure runs in the forked child of a multithreaded
    // process, where only async-signal-safe functions may be called. It
    // only reads the captured `groups` slice and makes the raw setgroups,
    // setgid and setuid system calls (nix wrappers that do not allocate);
    // an error becomes an io::Error from the raw errno, which does not
    // allocate either. No NSS, no locks, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(errno)?;
            nix::unistd::setgid(gid).map_err(errno)?;
            nix::unistd::setuid(uid).map_err(errno)?;
            Ok(())
        });
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// SIGTERM to the group, then SIGKILL after `grace`; the group leader is
/// reaped.
pub async fn kill_tree(child: &mut Child, grace: Duration) {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        let _ = tokio::time::timeout(grace, child.wait()).await;
        // Whatever of the group survived (or outlived its leader) goes now.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

/// Exit code, or the signal that ended the process.
pub fn exit_kind(status: std::process::ExitStatus) -> gse_core::seams::ExitKind {
    use gse_core::seams::ExitKind;
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Exited(code),
        (None, Some(sig)) => ExitKind::Signaled(sig),
        (None, None) => ExitKind::Exited(-1),
    }
}

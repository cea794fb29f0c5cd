//! Attack steps for the security tests, run by the `gse-hostile` binary
//! (one module per area), and [`as_user`], which starts that binary as an
//! unprivileged local user.

pub mod files;
pub mod hold;
pub mod http;
pub mod ipc;
pub mod plant;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use crate::bin;

/// A `gse-hostile` command that will run as `user` (uid, primary gid, no
/// supplementary groups: std drops them when root sets a uid). Panics when
/// the user does not exist: every Debian host has `nobody`.
pub fn as_user(user: &str) -> Command {
    let u = nix::unistd::User::from_name(user)
        .expect("user lookup")
        .unwrap_or_else(|| panic!("no user {user:?} on this host"));
    let mut cmd = Command::new(bin("gse-hostile"));
    cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    cmd
}

/// Runs `cmd` to completion and parses the JSON line it printed. Panics
/// with its stderr when it failed to run.
pub fn run_json(cmd: &mut Command) -> serde_json::Value {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn gse-hostile");
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "gse-hostile failed ({status}): {}{text}",
        String::from_utf8_lossy(&stderr)
    );
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("gse-hostile printed {text:?}: {e}"))
}

/// Makes `dir` and each ancestor up to `/` traversable by other users
/// (o+x), so a test's only barrier is the permission under test, not the
/// 0700 temp dir it lives in.
pub fn open_path_to(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(d) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001));
        }
    }
}

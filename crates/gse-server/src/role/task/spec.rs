//! What callers ask of the task role, once the API layer has parsed and
//! checked it, and the rules those checks apply (bounds, user names, paths).
//!
//! The API layer owns the wire shapes and names the offending field; the
//! rules themselves live here so that every entry point (HTTP today, a node
//! forwarding a task later) applies the same ones.

use gse_core::AgentRef;

/// Most atomic tasks in one script task.
pub const MAX_ATOMIC_TASKS: usize = 100;
/// Most script files one task writes.
pub const MAX_SCRIPTS: usize = 100;
/// Longest command line of an atomic task, bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most script content in one task, all files together, bytes.
pub const MAX_SCRIPT_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of log one `get_execute_script_result` entry returns (bk-job's
/// MAX_GSE_ATOMIC_TASK_CONTENT_BYTES).
pub const MAX_SCREEN_BYTES: u64 = 5 * 1024 * 1024;
/// Longest `tag`, `windows_interpreter` or task id accepted, bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest script file name or store directory, bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// A script task to start (`async_execute_script`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScriptTaskSpec {
    pub targets: Vec<TargetSpec>,
    pub scripts: Vec<ScriptFileSpec>,
    /// Sorted by id, ids exactly 0..n.
    pub atomic_tasks: Vec<AtomicSpec>,
    pub windows_interpreter: String,
    /// Run with the user's login environment (T5).
    pub login_env: bool,
    pub tag: String,
}

/// One target agent as the caller named it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// `bk_agent_id` exactly as sent.
    pub bk_agent_id: String,
    pub agent: AgentRef,
    /// Empty for the host itself.
    pub bk_container_id: String,
    /// Account to run as; empty = the agent's own user.
    pub user: String,
}

/// A file to write on the targets before running.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptFileSpec {
    pub name: String,
    pub dir: String,
    pub content: String,
}

/// One command; they run serially in id order.
#[derive(Clone, Debug, PartialEq)]
pub struct AtomicSpec {
    pub id: u32,
    pub command: String,
    /// 0 = the configured default.
    pub timeout_seconds: u32,
}

/// A target named in a poll or a terminate.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetName {
    pub bk_agent_id: String,
    pub bk_container_id: String,
}

/// One atomic task's log window in a poll.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtomicQuery {
    pub atomic_id: u32,
    /// Byte offset into the UTF-8 log.
    pub offset: u64,
    /// Most bytes wanted; `None` = [`MAX_SCREEN_BYTES`].
    pub limit: Option<u64>,
}

/// What one agent's part of a poll asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentQuery {
    pub target: TargetName,
    /// Empty = every atomic task from offset 0.
    pub atomic_tasks: Vec<AtomicQuery>,
}

/// `get_execute_script_result`: `None` = every entry from offset 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultQuery {
    pub agents: Option<Vec<AgentQuery>>,
}

/// Whether `user` is an account name we pass to agents:
/// `^[a-z_][a-z0-9_.-]{0,31}$`.
pub fn check_user(user: &str) -> Result<(), &'static str> {
    let mut bytes = user.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && user.len() <= 32 {
        Ok(())
    } else {
        Err("is not a valid user name (^[a-z_][a-z0-9_.-]{0,31}$)")
    }
}

/// Whether `dir` is an absolute directory without `..` or NUL. Unix paths
/// start with `/`; Windows ones with a drive (`C:\` or `C:/`).
pub fn check_store_dir(dir: &str) -> Result<(), &'static str> {
    let b = dir.as_bytes();
    let unix = b.first() == Some(&b'/');
    let windows =
        b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
    if !(unix || windows) {
        return Err("must be an absolute directory (/dir, or C:\\dir on Windows)");
    }
    if dir.contains('\0') {
        return Err("must not contain a NUL character");
    }
    if dir.split(['/', '\\']).any(|part| part == "..") {
        return Err("must not contain a `..` component");
    }
    if dir.len() > MAX_PATH_BYTES {
        return Err("is too long (at most 4096 bytes)");
    }
    Ok(())
}

/// Whether `name` is a plain file name.
pub fn check_script_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("must be a file name");
    }
    if name.contains(['/', '\\', '\0']) {
        return Err("must be a plain file name, without `/`, `\\` or NUL");
    }
    if name.len() > 255 {
        return Err("is too long (at most 255 bytes)");
    }
    Ok(())
}

/// Whether `command` can be run.
pub fn check_command(command: &str) -> Result<(), &'static str> {
    if command.trim().is_empty() {
        return Err("is empty");
    }
    if command.len() > MAX_COMMAND_BYTES {
        return Err("is over 65536 bytes");
    }
    if command.contains('\0') {
        return Err("must not contain a NUL character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["root", "_svc", "job-runner", "a.b", &"a".repeat(32)] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Root", "1abc", "a b", "a;rm", &"a".repeat(33), "ü"] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_dirs_and_names() {
        assert!(check_store_dir("/tmp/bkjob/root").is_ok());
        assert!(check_store_dir("C:\\gse\\script").is_ok());
        assert!(check_store_dir("tmp/x").is_err());
        assert!(check_store_dir("/tmp/../etc").is_err());
        assert!(check_store_dir("/tmp/a\0b").is_err());
        assert!(check_store_dir("/tmp/..a").is_ok());
        assert!(check_script_name("bk_gse_script_1.sh").is_ok());
        assert!(check_script_name("../x.sh").is_err());
        assert!(check_script_name("..").is_err());
        assert!(check_command("echo hi").is_ok());
        assert!(check_command("  ").is_err());
        assert!(check_command(&"x".repeat(MAX_COMMAND_BYTES + 1)).is_err());
    }
}

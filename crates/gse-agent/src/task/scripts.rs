//! Writing a task's script files before it runs (T3).
//!
//! Each `ScriptFile` goes to `dir/name`. Paths are checked first (absolute
//! dir, no `..`, a plain file name, no NUL), so a task cannot write outside
//! the directory it names. The agent runs as root and the default script
//! directory lives under the world-writable /tmp, so the directory is
//! opened with [`crate::safe_dir`]'s strict policy: walked from `/` one
//! `openat(O_NOFOLLOW)` at a time (only links root made are followed), and
//! every directory must be owned by root, the agent or the task's user, and
//! not writable by group or others unless sticky (like /tmp); anything else
//! is refused. Missing directories are created with mode 0755; the file is
//! written to a fresh temporary name in the opened directory and renamed
//! into place, so a concurrent run never sees half a script and a planted
//! symlink is replaced, never followed. When the task runs as a named
//! user, the file and the script directory itself (if created here) are
//! given to that user, so it can run (and later clean up) its scripts;
//! parent directories created on the way stay root's, so that one user's
//! first task (`/tmp/bkjob/alice`) never makes `/tmp/bkjob` theirs and
//! every other user's script directory under it unsafe.
//! Blocking: call from `spawn_blocking`.

use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use gse_core::seams::executor::RunAs;
use gse_proto::link::ScriptFile;

use crate::safe_dir::{DirError, DirOpener, Policy, TempFile};

/// Mode of scripts (and of the directories made for them).
const MODE: u32 = 0o755;

/// Why a script could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("refusing to write script {name:?} in {dir:?}: {reason}")]
    BadPath {
        dir: String,
        name: String,
        reason: &'static str,
    },
    #[error("refusing to write scripts into {}: {source}", dir.display())]
    Unsafe { dir: PathBuf, source: DirError },
    #[error("cannot write script {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give {path} to user {user:?}: {source}")]
    Chown {
        path: PathBuf,
        user: String,
        source: std::io::Error,
    },
}

/// Writes every script, stopping at the first failure.
pub fn write_all(scripts: &[ScriptFile], owner: Option<&RunAs>) -> Result<(), ScriptError> {
    for script in scripts {
        let (dir, _) = checked_path(script)?;
        write_script(&dir, &script.name, &script.content, owner)?;
    }
    Ok(())
}

/// The directory and full path of `script`, or why they are refused.
pub fn checked_path(script: &ScriptFile) -> Result<(PathBuf, PathBuf), ScriptError> {
    let refuse = |reason| ScriptError::BadPath {
        dir: script.dir.clone(),
        name: script.name.clone(),
        reason,
    };
    if script.dir.contains('\0') || script.name.contains('\0') {
        return Err(refuse("the path contains a NUL byte"));
    }
    let dir = PathBuf::from(&script.dir);
    if !dir.is_absolute() {
        return Err(refuse("the directory is not an absolute path"));
    }
    if dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse("the directory contains a `..` component"));
    }
    let name = script.name.as_str();
    if name.is_empty() || name == "." || name == ".." {
        return Err(refuse("the file name is empty, `.` or `..`"));
    }
    if name.contains('/') || (cfg!(windows) && name.contains('\\')) {
        return Err(refuse("the file name contains a path separator"));
    }
    let path = dir.join(name);
    Ok((dir, path))
}

/// Opens `dir` safely (see the module docs), then writes `name` in it
/// through a temporary name: mode 0755, given to `owner`.
fn write_script(
    dir: &Path,
    name: &str,
    content: &[u8],
    owner: Option<&RunAs>,
) -> Result<(), ScriptError> {
    let mut opener = DirOpener::new(Policy::Strict).create(true);
    if let Some(owner) = owner {
        opener = opener
            .trust(owner.uid, format!("the task's user {:?}", owner.name))
            .give_created(owner.uid, owner.gid);
    }
    let safe = opener.open(dir).map_err(|source| ScriptError::Unsafe {
        dir: dir.into(),
        source,
    })?;
    let path = dir.join(name);
    let write_err = |source| ScriptError::Write {
        path: path.clone(),
        source,
    };
    let temp = TempFile::create(&safe, name, MODE).map_err(write_err)?;
    set_executable(temp.file()).map_err(write_err)?;
    temp.file().write_all(content).map_err(write_err)?;
    if let Some(owner) = owner {
        give(temp.file(), owner).map_err(|source| ScriptError::Chown {
            path: path.clone(),
            user: owner.name.clone(),
            source,
        })?;
    }
    temp.persist(name).map_err(write_err)
}

/// 0755 whatever the agent's umask.
#[cfg(unix)]
fn set_executable(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(MODE))
}

#[cfg(not(unix))]
fn set_executable(_file: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn give(file: &File, owner: &RunAs) -> std::io::Result<()> {
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
}

#[cfg(not(unix))]
fn give(_file: &File, _owner: &RunAs) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests;

//! Writing a task's script files before it runs (T3).
//!
//! Each `ScriptFile` goes to `dir/name`. Paths are checked first (absolute
//! dir, no `..`, a plain file name, no NUL), so a task cannot write outside
//! the directory it names. Missing directories are created with mode 0755;
//! the file is written to a temporary name in the same directory and renamed
//! into place, so a concurrent run never sees half a script. When the task
//! runs as a named user, the file and every directory created here are
//! given to that user, so it can run (and later clean up) its scripts.
//! Blocking: call from `spawn_blocking`.

use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use gse_core::seams::executor::RunAs;
use gse_proto::link::ScriptFile;

/// Why a script could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("refusing to write script {name:?} in {dir:?}: {reason}")]
    BadPath {
        dir: String,
        name: String,
        reason: &'static str,
    },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
        let (dir, path) = checked_path(script)?;
        ensure_dir(&dir, owner)?;
        write_atomically(&path, &script.content, owner)?;
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

/// Creates `dir` and its missing parents (0755), giving the new ones to
/// `owner`.
fn ensure_dir(dir: &Path, owner: Option<&RunAs>) -> Result<(), ScriptError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        let created = fs::create_dir(d);
        match created {
            Ok(()) => {}
            // Another task made it in the meantime.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(source) => {
                return Err(ScriptError::CreateDir {
                    path: d.into(),
                    source,
                });
            }
        }
        platform::set_dir_mode(d).map_err(|source| ScriptError::CreateDir {
            path: d.into(),
            source,
        })?;
        if let Some(owner) = owner {
            platform::give_path(d, owner).map_err(|source| ScriptError::Chown {
                path: d.into(),
                user: owner.name.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Temp file in the same directory, 0755, owned by `owner`, then rename.
fn write_atomically(path: &Path, content: &[u8], owner: Option<&RunAs>) -> Result<(), ScriptError> {
    let tmp = temp_name(path);
    let write_err = |source| ScriptError::Write {
        path: path.into(),
        source,
    };
    let result = (|| {
        let mut file = platform::create_new_executable(&tmp).map_err(write_err)?;
        file.write_all(content).map_err(write_err)?;
        if let Some(owner) = owner {
            platform::give_file(&file, owner).map_err(|source| ScriptError::Chown {
                path: path.into(),
                user: owner.name.clone(),
                source,
            })?;
        }
        drop(file);
        fs::rename(&tmp, path).map_err(write_err)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `.<name>.gse-tmp-<random>` next to `path`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.gse-tmp-{:016x}", rand::random::<u64>()))
}

#[cfg(unix)]
mod platform {
    use std::fs::{self, File, OpenOptions, Permissions};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use gse_core::seams::executor::RunAs;

    const MODE: u32 = 0o755;

    /// Sets 0755 regardless of the agent's umask.
    pub fn set_dir_mode(dir: &Path) -> std::io::Result<()> {
        fs::set_permissions(dir, Permissions::from_mode(MODE))
    }

    pub fn create_new_executable(path: &Path) -> std::io::Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(path)?;
        file.set_permissions(Permissions::from_mode(MODE))?;
        Ok(file)
    }

    /// lchown: never follows a symlink planted in place of our directory.
    pub fn give_path(path: &Path, owner: &RunAs) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
    }

    pub fn give_file(file: &File, owner: &RunAs) -> std::io::Result<()> {
        std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
    }
}

#[cfg(windows)]
mod platform {
    use std::fs::{File, OpenOptions};
    use std::path::Path;

    use gse_core::seams::executor::RunAs;

    pub fn set_dir_mode(_dir: &Path) -> std::io::Result<()> {
        Ok(())
    }

    pub fn create_new_executable(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    pub fn give_path(_path: &Path, _owner: &RunAs) -> std::io::Result<()> {
        Ok(())
    }

    pub fn give_file(_file: &File, _owner: &RunAs) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests;

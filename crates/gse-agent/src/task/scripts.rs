//! Writing a task's script files before it runs (T3).
//!
//! Each `ScriptFile` goes to `dir/name`. Paths are checked first (absolute
//! dir, no `..`, a plain file name, no NUL), so a task cannot write outside
//! the directory it names. The agent runs as root and the default script
//! directory lives under the world-writable /tmp, so on Unix the directory
//! is opened one component at a time from `/` without following symlinks
//! (`openat` with `O_NOFOLLOW`), and every existing component must be a real
//! directory owned by root, the agent or the task's user, and not writable
//! by group or others unless sticky (like /tmp); anything else is refused.
//! Missing directories are created with mode 0755; the file is written to a
//! fresh temporary name (`O_EXCL|O_NOFOLLOW`) in the opened directory and
//! renamed into place, so a concurrent run never sees half a script and a
//! planted symlink is replaced, never followed. When the task runs as a
//! named user, the file and the script directory itself (if created here)
//! are given to that user, so it can run (and later clean up) its scripts;
//! parent directories created on the way stay root's, so that one user's
//! first task (`/tmp/bkjob/alice`) never makes `/tmp/bkjob` theirs and
//! every other user's script directory under it unsafe.
//! Blocking: call from `spawn_blocking`.

#[cfg(windows)]
use std::fs;
#[cfg(windows)]
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
    #[error("refusing to write scripts into {dir}: {reason}")]
    Unsafe { dir: PathBuf, reason: String },
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
        platform::write_script(&dir, &path, &script.content, owner)?;
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

/// Creates `dir` and its missing parents, giving the new ones to `owner`
/// (Windows; Unix opens the directory safely instead).
#[cfg(windows)]
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

/// Temp file in the same directory, owned by `owner`, then rename.
#[cfg(windows)]
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
    use std::fs::{File, OpenOptions, Permissions};
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::{Component, Path, PathBuf};

    use gse_core::seams::executor::RunAs;
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::{Mode, mkdirat};
    use nix::unistd::{UnlinkatFlags, unlinkat};

    use super::{ScriptError, temp_name};

    const MODE: u32 = 0o755;

    /// Opens `dir` safely (see the module docs), then writes `path` in it
    /// through a temporary name.
    pub fn write_script(
        dir: &Path,
        path: &Path,
        content: &[u8],
        owner: Option<&RunAs>,
    ) -> Result<(), ScriptError> {
        let dir_fd = open_dir(dir, owner)?;
        write_in(&dir_fd, path, content, owner)
    }

    /// Walks `dir` from `/`, one `openat(O_NOFOLLOW|O_DIRECTORY)` per
    /// component, checking each directory and creating missing ones (0755,
    /// then given to `owner`).
    fn open_dir(dir: &Path, owner: Option<&RunAs>) -> Result<File, ScriptError> {
        let unsafe_dir = |reason: String| ScriptError::Unsafe {
            dir: dir.into(),
            reason,
        };
        let create_err = |path: &Path, source: std::io::Error| ScriptError::CreateDir {
            path: path.into(),
            source,
        };
        let mut at = PathBuf::from("/");
        let mut current = OpenOptions::new()
            .read(true)
            .custom_flags(dir_flags().bits())
            .open(&at)
            .map_err(|e| create_err(&at, e))?;
        check_dir(&current, &at, owner).map_err(unsafe_dir)?;
        let last = dir
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        let mut depth = 0;
        for component in dir.components() {
            let name = match component {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(name) => name,
                // checked_path refuses `..`; Unix has no prefixes.
                _ => return Err(unsafe_dir(format!("{at:?} is followed by {component:?}"))),
            };
            at.push(name);
            depth += 1;
            let mut created = false;
            let next = loop {
                match openat(current.as_fd(), name, dir_flags(), Mode::empty()) {
                    Ok(fd) => break File::from(fd),
                    Err(Errno::ENOENT) if !created => {
                        match mkdirat(current.as_fd(), name, Mode::from_bits_truncate(MODE)) {
                            Ok(()) => created = true,
                            // Another task made it in the meantime: check it.
                            Err(Errno::EEXIST) => {}
                            Err(e) => return Err(create_err(&at, e.into())),
                        }
                    }
                    // Linux says ENOTDIR for O_NOFOLLOW|O_DIRECTORY on a
                    // symlink; lstat only picks the words, either is refused.
                    Err(Errno::ELOOP | Errno::ENOTDIR) => {
                        let is_link = std::fs::symlink_metadata(&at)
                            .is_ok_and(|m| m.file_type().is_symlink());
                        return Err(unsafe_dir(if is_link {
                            format!(
                                "{} is a symbolic link, and scripts are only written through \
                                 real directories (use the link's target as the script \
                                 directory, or remove the link)",
                                at.display()
                            )
                        } else {
                            format!(
                                "{} exists and is not a directory (remove it or choose another \
                                 script directory)",
                                at.display()
                            )
                        }));
                    }
                    Err(e) => return Err(create_err(&at, e.into())),
                }
            };
            if created {
                // 0755 regardless of the agent's umask.
                next.set_permissions(Permissions::from_mode(MODE))
                    .map_err(|e| create_err(&at, e))?;
                if let Some(owner) = owner.filter(|_| depth == last) {
                    std::os::unix::fs::fchown(&next, Some(owner.uid), Some(owner.gid)).map_err(
                        |source| ScriptError::Chown {
                            path: at.clone(),
                            user: owner.name.clone(),
                            source,
                        },
                    )?;
                }
            }
            check_dir(&next, &at, owner).map_err(unsafe_dir)?;
            current = next;
        }
        Ok(current)
    }

    fn dir_flags() -> OFlag {
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
    }

    /// Why the opened directory `at` cannot be trusted, if it cannot: it
    /// must be owned by root, the agent or `owner`, and not writable by
    /// group or others unless sticky.
    fn check_dir(dir: &File, at: &Path, owner: Option<&RunAs>) -> Result<(), String> {
        let meta = dir
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", at.display()))?;
        let uid = meta.uid();
        let trusted = uid == 0
            || uid == nix::unistd::geteuid().as_raw()
            || owner.is_some_and(|o| o.uid == uid);
        if !trusted {
            let user = owner
                .map(|o| format!(" nor the task's user {:?}", o.name))
                .unwrap_or_default();
            return Err(format!(
                "{} is owned by uid {uid}, which is neither root{user}, so another user controls \
                 it (remove it, or chown it to root)",
                at.display()
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "{} is writable by group or others (mode {mode:04o}) without the sticky bit, \
                 so another user could swap what is in it (run `chmod go-w {}`, or remove it)",
                at.display(),
                at.display()
            ));
        }
        Ok(())
    }

    /// A fresh temporary name in `dir` (`O_EXCL|O_NOFOLLOW`), 0755, given
    /// to `owner`, then renamed over `path`'s name: a symlink already there
    /// is replaced, not followed.
    fn write_in(
        dir: &File,
        path: &Path,
        content: &[u8],
        owner: Option<&RunAs>,
    ) -> Result<(), ScriptError> {
        let name = path.file_name().unwrap_or_default();
        let tmp = temp_name(path);
        let tmp_name = tmp.file_name().unwrap_or_default();
        let write_err = |source| ScriptError::Write {
            path: path.into(),
            source,
        };
        let result = (|| {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = openat(dir.as_fd(), tmp_name, flags, Mode::from_bits_truncate(MODE))
                .map_err(|e| write_err(e.into()))?;
            let mut file = File::from(fd);
            file.set_permissions(Permissions::from_mode(MODE))
                .map_err(write_err)?;
            file.write_all(content).map_err(write_err)?;
            if let Some(owner) = owner {
                std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid)).map_err(
                    |source| ScriptError::Chown {
                        path: path.into(),
                        user: owner.name.clone(),
                        source,
                    },
                )?;
            }
            drop(file);
            renameat(dir.as_fd(), tmp_name, dir.as_fd(), name).map_err(|e| write_err(e.into()))
        })();
        if result.is_err() {
            let _ = unlinkat(dir.as_fd(), tmp_name, UnlinkatFlags::NoRemoveDir);
        }
        result
    }
}

#[cfg(windows)]
mod platform {
    use std::fs::{File, OpenOptions};
    use std::path::Path;

    use gse_core::seams::executor::RunAs;

    use super::{ScriptError, ensure_dir, write_atomically};

    pub fn write_script(
        dir: &Path,
        path: &Path,
        content: &[u8],
        owner: Option<&RunAs>,
    ) -> Result<(), ScriptError> {
        ensure_dir(dir, owner)?;
        write_atomically(path, content, owner)
    }

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

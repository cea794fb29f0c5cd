//! [`SocketFile`]: the socket file of a local socket, made by root in a
//! directory that may be on a path other users can write to (`/tmp` in a
//! quick start, a data dir under it).
//!
//! The directory is opened once with [`crate::safe_dir`]'s
//! [`Policy::NoPlanted`] walk (missing parts created 0755): a symbolic link
//! on the way is followed only if root or the agent's user made it, and a
//! directory in a group/other-writable parent must be owned by root or the
//! agent's user (quick starts and tests run the agent as the user that owns
//! their data dir). Everything after that is relative to the opened
//! directory, whatever is renamed meanwhile: the stale socket is checked
//! with `fstatat` and removed with `unlinkat`, and the socket is bound
//! through `/proc/self/fd/<dir>/<name>` (there is no `bindat`; the kernel
//! resolves that path to the directory descriptor itself).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use tokio::net::UnixListener;

use super::{SocketError, SocketOptions};
use crate::safe_dir::{DirOpener, Policy, SafeDir};

/// A socket file this process bound.
#[derive(Debug)]
pub struct SocketFile {
    /// The configured path, for messages and links.
    path: PathBuf,
    dir: SafeDir,
    name: OsString,
    /// (dev, ino) of the file, to leave a replaced one alone at exit.
    id: (u64, u64),
}

impl SocketFile {
    /// Opens (creating) the parent directory as the module doc says,
    /// removes a stale socket nobody listens on, binds `path` and sets its
    /// mode and group. Needs a tokio runtime.
    pub fn bind(
        path: &Path,
        opts: &SocketOptions,
    ) -> Result<(UnixListener, SocketFile), SocketError> {
        let (dir, name) = open_parent(path, opts.key)?;
        let at = in_dir(&dir, &name);
        remove_stale(&dir, &name, path, opts.key)?;
        let listener = UnixListener::bind(&at).map_err(|source| SocketError::Bind {
            path: path.into(),
            source,
        })?;
        let id = set_mode_and_group(&dir, &name, path, opts)?;
        let file = SocketFile {
            path: path.into(),
            dir,
            name,
            id,
        };
        Ok((listener, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file unless someone replaced it meanwhile.
    pub fn remove(&self) {
        match entry_stat(&self.dir, &self.name) {
            Ok(Some(st)) if (st.st_dev, st.st_ino) == self.id => {
                if let Err(error) = self.dir.remove_file(&self.name) {
                    tracing::warn!(path = %self.path.display(), %error, "removing a local socket failed");
                }
            }
            _ => {
                tracing::debug!(path = %self.path.display(), "socket file is gone or replaced; left alone")
            }
        }
    }
}

/// The socket's directory, opened safely, and the file name in it.
fn open_parent(path: &Path, key: &'static str) -> Result<(SafeDir, OsString), SocketError> {
    let not_a_file = || SocketError::NotAFile {
        key,
        path: path.into(),
    };
    let absolute = std::path::absolute(path).map_err(|_| not_a_file())?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(not_a_file());
    };
    let dir = DirOpener::new(Policy::NoPlanted)
        .create(true)
        .open(parent)
        .map_err(|source| SocketError::Dir {
            key,
            path: path.into(),
            source,
        })?;
    Ok((dir, name.to_os_string()))
}

/// A path naming `name` in the opened `dir` itself (for `bind`/`connect`,
/// which take no directory descriptor).
pub(super) fn in_dir(dir: &SafeDir, name: &OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_file().as_raw_fd())).join(name)
}

/// `lstat` of `name` in `dir`; `None` if there is nothing.
fn entry_stat(dir: &SafeDir, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir.as_file().as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sets mode and group on the socket just bound as `name` in `dir`,
/// through an `O_PATH|O_NOFOLLOW` descriptor: if the name was swapped for a
/// symlink meanwhile, it is refused rather than followed (a plain chmod by
/// path would follow it, as root). Returns the file's (dev, ino).
pub(super) fn set_mode_and_group(
    dir: &SafeDir,
    name: &OsStr,
    path: &Path,
    opts: &SocketOptions,
) -> Result<(u64, u64), SocketError> {
    let chmod_err = |source: io::Error| SocketError::Chmod {
        path: path.into(),
        mode: opts.mode,
        source,
    };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir.as_file().as_fd(), name, flags, Mode::empty())
        .map_err(|e| chmod_err(e.into()))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(chmod_err)?;
    if !meta.file_type().is_socket() {
        return Err(chmod_err(io::Error::other(
            "it is no longer the socket just bound",
        )));
    }
    if !opts.group.is_empty() {
        set_group(&file, path, &opts.group)?;
    }
    // chmod through the descriptor: /proc/self/fd/N names this very inode.
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(opts.mode))
        .map_err(chmod_err)?;
    Ok((meta.dev(), meta.ino()))
}

/// Gives the socket open as `file` (`O_PATH`) to `group`.
fn set_group(file: &std::fs::File, path: &Path, group: &str) -> Result<(), SocketError> {
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| SocketError::NoGroup {
            group: group.to_string(),
        })?
        .gid;
    nix::unistd::fchownat(file.as_fd(), "", None, Some(gid), AtFlags::AT_EMPTY_PATH).map_err(|e| {
        SocketError::Chown {
            path: path.into(),
            group: group.to_string(),
            source: e.into(),
        }
    })
}

/// Removes `name` in `dir` if it is a socket nobody accepts on; refuses
/// anything else.
fn remove_stale(
    dir: &SafeDir,
    name: &OsStr,
    path: &Path,
    key: &'static str,
) -> Result<(), SocketError> {
    let probe = |source: io::Error| SocketError::Probe {
        path: path.into(),
        source,
    };
    let Some(st) = entry_stat(dir, name).map_err(probe)? else {
        return Ok(());
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(SocketError::NotASocket {
            key,
            path: path.into(),
        });
    }
    match std::os::unix::net::UnixStream::connect(in_dir(dir, name)) {
        Ok(_) => Err(SocketError::InUse {
            key,
            path: path.into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale local socket");
            dir.remove_file(name)
                .map_err(|source| SocketError::RemoveStale {
                    path: path.into(),
                    source,
                })
        }
        Err(source) => Err(probe(source)),
    }
}

//! What the agent's two local unix sockets (the data socket, COMPAT
//! §1.1-1.2, and the plugin-message socket, §1.3) share: they are open to
//! local users, who are not trusted (DESIGN "Trust").
//!
//! - [`SocketFile`]: binds the socket file (removing a stale one nobody
//!   listens on), sets its mode and group without following a symlink, and
//!   removes it at exit only if it is still ours.
//! - [`admission`]: at most `max_connections` at once, at most
//!   `max_connections_per_uid` of one non-root user (SO_PEERCRED); and a
//!   budget for unfinished large frames per user and in total.
//! - [`reader`]: reads a connection incrementally (never reserving what a
//!   header claims), within the budget, and closes it when it completes no
//!   frame for `idle_timeout`.
//! - [`links`]: the extra paths collectors dial, made as symlinks through
//!   directories no other user controls, and removed at stop if still ours.
//!
//! The protocols themselves are in `ipc_server`/`ipc_codec` and
//! `message_ipc`.

pub mod admission;
pub mod links;
pub mod reader;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use tokio::net::{UnixListener, UnixStream};

use super::ipc_codec::Peer;

/// Who is on the other end of `stream` (SO_PEERCRED).
pub fn peer_of(stream: &UnixStream) -> Peer {
    match stream.peer_cred() {
        Ok(c) => Peer {
            pid: c.pid(),
            uid: Some(c.uid()),
        },
        Err(_) => Peer::default(),
    }
}

/// How the socket file is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Permission bits.
    pub mode: u32,
    /// Group name; `""` = the agent's own.
    pub group: String,
    /// The config key naming the path, for error messages.
    pub key: &'static str,
}

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the directory {path} of the socket ({key}): {source}")]
    CreateDir {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; remove it or set {key} to another path")]
    NotASocket { key: &'static str, path: PathBuf },
    #[error(
        "{path} is in use by another listener (is another agent running?); stop it or set {key} \
         to another path"
    )]
    InUse { key: &'static str, path: PathBuf },
    #[error("cannot check the existing socket {path}: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set mode {mode:04o} on {path}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("no group {group:?} on this host (data.socket_group); create it or change the key")]
    NoGroup { group: String },
    #[error("cannot give {path} to group {group:?}: {source}")]
    Chown {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
}

// === impl SocketFile ===

/// A socket file this process bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (dev, ino) of the file, to leave a replaced one alone at exit.
    id: (u64, u64),
}

impl SocketFile {
    /// Creates the parent directory, removes a stale socket nobody listens
    /// on, binds `path` and sets its mode and group. Needs a tokio runtime.
    pub fn bind(
        path: &Path,
        opts: &SocketOptions,
    ) -> Result<(UnixListener, SocketFile), SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::CreateDir {
                key: opts.key,
                path: dir.into(),
                source,
            })?;
        }
        remove_stale(path, opts.key)?;
        let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
            path: path.into(),
            source,
        })?;
        let id = set_mode_and_group(path, opts)?;
        Ok((
            listener,
            SocketFile {
                path: path.into(),
                id,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file unless someone replaced it meanwhile.
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "removing a local socket failed");
                }
            }
            _ => {
                tracing::debug!(path = %self.path.display(), "socket file is gone or replaced; left alone")
            }
        }
    }
}

/// Sets mode and group on the socket just bound at `path`, through an
/// `O_PATH|O_NOFOLLOW` descriptor: if the name was swapped for a symlink
/// meanwhile, it is refused rather than followed (a plain chmod by path
/// would follow it, as root). Returns the file's (dev, ino).
fn set_mode_and_group(path: &Path, opts: &SocketOptions) -> Result<(u64, u64), SocketError> {
    let chmod_err = |source: io::Error| SocketError::Chmod {
        path: path.into(),
        mode: opts.mode,
        source,
    };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(path, flags, Mode::empty()).map_err(|e| chmod_err(e.into()))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(chmod_err)?;
    if !meta.file_type().is_socket() {
        return Err(chmod_err(io::Error::other(
            "it is no longer the socket just bound",
        )));
    }
    if !opts.group.is_empty() {
        let group = nix::unistd::Group::from_name(&opts.group)
            .ok()
            .flatten()
            .ok_or_else(|| SocketError::NoGroup {
                group: opts.group.clone(),
            })?;
        nix::unistd::fchownat(
            file.as_fd(),
            "",
            None,
            Some(group.gid),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| SocketError::Chown {
            path: path.into(),
            group: opts.group.clone(),
            source: e.into(),
        })?;
    }
    // chmod through the descriptor: /proc/self/fd/N names this very inode.
    let by_fd = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&by_fd, std::fs::Permissions::from_mode(opts.mode))
        .map_err(chmod_err)?;
    Ok((meta.dev(), meta.ino()))
}

/// Removes `path` if it is a socket nobody accepts on; refuses otherwise.
fn remove_stale(path: &Path, key: &'static str) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Probe {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            key,
            path: path.into(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            key,
            path: path.into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale local socket");
            std::fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(SocketError::Probe {
            path: path.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;

//! What the agent's two local unix sockets (the data socket, COMPAT
//! §1.1-1.2, and the plugin-message socket, §1.3) share: they are open to
//! local users, who are not trusted (DESIGN "Trust").
//!
//! - [`SocketFile`]: opens the socket's directory with `safe_dir` (no
//!   symlink or directory another user planted on the way), binds the
//!   socket file in it (removing a stale one nobody listens on), sets its
//!   mode and group without following a symlink, and removes it at exit
//!   only if it is still ours.
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
mod file;
pub mod links;
pub mod reader;

use std::io;
use std::path::PathBuf;

use tokio::net::UnixStream;

pub use self::file::SocketFile;
use super::ipc_codec::Peer;
use crate::safe_dir::DirError;

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
    #[error(
        "{path} is not a path to a socket file ({key}); name a file, e.g. .../ipc.state.report"
    )]
    NotAFile { key: &'static str, path: PathBuf },
    #[error("cannot use the directory of the socket {path} ({key}): {source}")]
    Dir {
        key: &'static str,
        path: PathBuf,
        source: DirError,
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

#[cfg(test)]
mod tests;

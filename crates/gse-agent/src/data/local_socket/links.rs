//! The extra paths collectors dial (`data.ipc_links`,
//! `plugin.message_ipc_links`), made as symlinks to the agent's socket at
//! start ([`Links::make`]) and removed at stop ([`Links::remove`]).
//!
//! The agent runs as root and these paths are host-wide (`/var/run/...`,
//! `/usr/local/gse/...`), so a local user must not be able to steer where
//! they are made. Each parent directory is opened with [`crate::safe_dir`]'s
//! strict policy, trusting no user besides root and the agent ([`open_dir`]):
//! walked from `/` one `openat(O_NOFOLLOW)` at a time, every directory on
//! the way must be owned by root (or the agent's user) and not writable by
//! group or others unless sticky; missing ones are created 0755, root's. A
//! symlink on the way is followed only if root (or the agent) made it, like
//! `/var/run -> /run`: since its directory passed the check, no other user
//! could have planted it. The link is made relative to the opened directory
//! (`symlinkat`).
//!
//! Ownership: a path that already holds anything but a symlink to this
//! socket belongs to someone else (another agent, a GSE 1.0 install) and is
//! left alone with a warning. At stop a link is removed only if it still
//! points at this socket.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::safe_dir::{DirError, DirOpener, Policy, SafeDir};

/// The links this agent made, to remove at stop.
#[derive(Debug, Default)]
pub struct Links {
    made: Vec<Made>,
}

#[derive(Debug)]
struct Made {
    dir: SafeDir,
    name: OsString,
    path: PathBuf,
    target: PathBuf,
}

// === impl Links ===

impl Links {
    /// Makes each of `links` a symlink to `target`; a path that cannot be
    /// made (or is someone else's) is logged with `key` and skipped.
    pub fn make(target: &Path, links: &[PathBuf], key: &'static str) -> Links {
        let mut made = Vec::new();
        for link in links {
            match make_one(target, link) {
                Ok(m) => {
                    tracing::info!(link = %link.display(), target = %target.display(), "local socket linked");
                    made.push(m);
                }
                Err(reason) => tracing::warn!(link = %link.display(), "{key}: {reason}"),
            }
        }
        Links { made }
    }

    /// Paths currently linked.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.made.iter().map(|m| m.path.as_path())
    }

    /// Removes each link that still points at the socket.
    pub fn remove(self) {
        for m in self.made {
            match m.dir.read_link(&m.name) {
                Ok(to) if to == m.target => {
                    if let Err(e) = m.dir.remove_file(&m.name) {
                        tracing::warn!(link = %m.path.display(), error = %e, "cannot remove a socket link");
                    }
                }
                _ => {
                    tracing::debug!(link = %m.path.display(), "socket link gone or replaced; left alone")
                }
            }
        }
    }
}

/// Opens (creating what is missing) the directory `dir` a link is made in,
/// as the module doc says; the error names the component that is refused
/// and why.
pub fn open_dir(dir: &Path) -> Result<SafeDir, DirError> {
    DirOpener::new(Policy::Strict).create(true).open(dir)
}

fn make_one(target: &Path, link: &Path) -> Result<Made, String> {
    let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
        return Err("not a path to a file".into());
    };
    let dir = open_dir(parent).map_err(|e| e.to_string())?;
    match dir.symlink(target, name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match dir.read_link(name) {
            Ok(to) if to == target => {}
            Ok(to) => {
                return Err(format!(
                    "the path is a symlink to {} (not this agent's); left alone",
                    to.display()
                ));
            }
            // readlinkat says EINVAL for what is not a link.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(
                    "the path exists and is not a symlink (not this agent's); left alone".into(),
                );
            }
            Err(e) => return Err(format!("cannot read it: {e}")),
        },
        Err(e) => return Err(format!("cannot make the symlink: {e}")),
    }
    Ok(Made {
        dir,
        name: name.to_os_string(),
        path: link.to_path_buf(),
        target: target.to_path_buf(),
    })
}

//! Opening directories a local user cannot redirect, and writing files in
//! them by descriptor: the task script writer (T3) and file-transfer targets
//! (F1-F10) both write as root into directories named by a remote caller,
//! often under the world-writable /tmp (issue 9, item 5); the collector
//! socket links (`data::local_socket::links`) are made as root in host-wide
//! directories (`/var/run/gse2/...`, `/usr/local/gse/...`).
//!
//! Start at [`DirOpener`]. [`DirOpener::open`] walks a directory from `/`,
//! one `openat(O_NOFOLLOW|O_DIRECTORY)` per component, so what it returns
//! is the directory that was checked, whatever is renamed meanwhile:
//! - a symbolic link on the way is followed only when root or the agent
//!   made it (`/var/run -> ../run`, `/data -> /data1`), and its target is
//!   walked with the same checks; a link anyone else made is refused;
//! - every directory is checked against a [`Policy`]: [`Policy::Strict`]
//!   (scripts, run as root right after, and socket links, which trust no
//!   other user: owned by root, the agent or the trusted user, and writable
//!   by no one else unless sticky, like /tmp) or
//!   [`Policy::NoPlanted`] (pushed files: a directory in a parent that
//!   others may write in must be owned by root, the agent or the trusted
//!   user, so nobody can slip in a directory of their own);
//! - missing directories are created (0755) when asked.
//!
//! [`DirOpener::child`] goes one level further and never follows a link
//! (the inside of a transfer's tree). [`SafeDir`] then creates, renames and
//! removes entries relative to its descriptor; [`TempFile`] is the
//! write-then-rename every writer here uses, so a planted link at the final
//! name is replaced, never written through. Windows has no `openat`: there
//! the same API works on paths, refusing links it sees. Blocking.
#![cfg_attr(windows, allow(dead_code))]

use std::path::PathBuf;

mod temp;
#[cfg(all(test, unix))]
mod tests;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

pub use temp::{TempFile, is_temp_file_name, temp_name};
#[cfg(unix)]
pub use unix::SafeDir;
#[cfg(windows)]
pub use windows::SafeDir;

/// Mode of directories created on the way.
pub const DIR_MODE: u32 = 0o755;
/// Most symbolic links followed on the way to one directory (Linux's own
/// limit).
pub const MAX_LINKS: u32 = 40;

/// What a directory on the way must be to be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Owned by root, the agent or the trusted user, and not writable by
    /// group or others unless sticky.
    Strict,
    /// When its parent is writable by group or others, owned by root, the
    /// agent or the trusted user.
    NoPlanted,
}

/// Why a directory was refused or could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{} is not an absolute path", path.display())]
    NotAbsolute { path: PathBuf },
    #[error("{} is a symbolic link {reason}", path.display())]
    Symlink { path: PathBuf, reason: String },
    #[error(
        "{} exists and is not a directory (remove it or choose another directory)",
        path.display()
    )]
    NotADir { path: PathBuf },
    #[error(
        "{} is owned by uid {uid}, not by root{also}, so another user controls it (remove it, \
         or chown it to root)",
        path.display()
    )]
    Untrusted {
        path: PathBuf,
        uid: u32,
        also: String,
    },
    #[error(
        "{} is writable by group or others (mode {mode:04o}) without the sticky bit, so another \
         user could swap what is in it (run `chmod go-w {}`, or remove it)",
        path.display(),
        path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("directory {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error(
        "more than {MAX_LINKS} symbolic links on the way to {} (a loop?)",
        path.display()
    )]
    TooManyLinks { path: PathBuf },
    #[error("cannot create directory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open directory {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give directory {} to {who}: {source}", path.display())]
    Chown {
        path: PathBuf,
        who: String,
        source: std::io::Error,
    },
}

/// One more user, besides root and the agent, whose directories are trusted.
#[derive(Clone, Debug)]
struct Trusted {
    uid: u32,
    /// For messages: `the task's user "alice"`.
    who: String,
}

/// How to open directories: the policy, who is trusted, what to create.
#[derive(Clone, Debug)]
pub struct DirOpener {
    policy: Policy,
    trusted: Option<Trusted>,
    create: bool,
    /// Gives the requested directory, when created here, to uid:gid.
    give_created: Option<(u32, u32)>,
}

// === impl DirOpener ===

impl DirOpener {
    /// Opens existing directories only, trusting root and the agent.
    pub fn new(policy: Policy) -> Self {
        DirOpener {
            policy,
            trusted: None,
            create: false,
            give_created: None,
        }
    }

    /// Also trusts directories owned by `uid` (`who` names it in messages);
    /// never links it made.
    pub fn trust(mut self, uid: u32, who: String) -> Self {
        self.trusted = Some(Trusted { uid, who });
        self
    }

    /// Creates missing directories ([`DIR_MODE`], owned by the agent).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Gives the directory [`DirOpener::open`] was asked for to uid:gid
    /// when it creates it (not the parents it creates on the way).
    pub fn give_created(mut self, uid: u32, gid: u32) -> Self {
        self.give_created = Some((uid, gid));
        self
    }

    /// Whether a directory owned by `uid` may be used.
    fn trusts(&self, uid: u32) -> bool {
        is_root_or_agent(uid) || self.trusted.as_ref().is_some_and(|t| t.uid == uid)
    }

    /// " or the task's user ..." for [`DirError::Untrusted`].
    fn also(&self) -> String {
        match &self.trusted {
            Some(t) => format!(" or {}", t.who),
            None => String::new(),
        }
    }

    /// The error for a directory owned by `uid` at `path`, if untrusted.
    fn check_owner(&self, path: &std::path::Path, uid: u32) -> Result<(), DirError> {
        if self.trusts(uid) {
            return Ok(());
        }
        Err(DirError::Untrusted {
            path: path.into(),
            uid,
            also: self.also(),
        })
    }

    /// Checks a directory of `mode` owned by `uid`, in a parent of
    /// `parent_mode` (`None` for `/`), against the policy.
    fn check(
        &self,
        path: &std::path::Path,
        uid: u32,
        mode: u32,
        parent_mode: Option<u32>,
    ) -> Result<(), DirError> {
        let others_write = |m: u32| m & 0o022 != 0;
        match self.policy {
            Policy::Strict => {
                self.check_owner(path, uid)?;
                if others_write(mode) && mode & 0o1000 == 0 {
                    return Err(DirError::Writable {
                        path: path.into(),
                        mode: mode & 0o7777,
                    });
                }
                Ok(())
            }
            Policy::NoPlanted if parent_mode.is_some_and(others_write) => {
                self.check_owner(path, uid)
            }
            Policy::NoPlanted => Ok(()),
        }
    }
}

/// Whether `uid` is root or the agent's own user: the only makers of links
/// that are followed.
#[cfg(unix)]
fn is_root_or_agent(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

#[cfg(not(unix))]
fn is_root_or_agent(_uid: u32) -> bool {
    true
}

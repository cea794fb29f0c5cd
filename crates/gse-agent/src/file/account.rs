//! Reading a transfer's source with the rights of the account it names: the
//! agent runs as root, and a transfer whose source says `user: nobody` must
//! deliver only what nobody may read (issue 9, item 4).
//!
//! Start at [`SourceAccount`]. The agent's own account changes nothing. For
//! another user, a thread of its own switches *its* filesystem credentials
//! to the user's (supplementary groups, fsgid, fsuid) and runs every open,
//! listing and stat of the task ([`SourceAccount::run`]), so the kernel
//! applies modes, ACLs and LSM rules exactly as for that user. Reading an
//! opened file needs no further rights, so piece reads open there and read
//! on the caller's thread.
//!
//! Why a dedicated thread: Linux keeps credentials per thread. glibc makes
//! `setgroups`/`setuid` process-wide by signalling every thread, but not
//! `setfsuid`/`setfsgid`, and rustix's `set_thread_groups` is the raw
//! per-thread call. Moving the fsuid away from 0 also clears
//! CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH on that thread, so root's
//! override is gone there. tokio's blocking threads are shared by every
//! task, so they are never switched. Rejected: a helper process (a process
//! per user, descriptors passed back over a socket) and opening as root
//! then checking the modes by hand (misses ACLs and LSMs, races with the
//! file changing). Switching is Linux only; elsewhere naming another user
//! is refused. Everything here is blocking: call from `spawn_blocking`.

use std::fs::File;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, mpsc};

use gse_core::seams::executor::RunAs;

use crate::task::user::{self, UserError};

/// Why the source cannot be read as the account it names.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("source account: {0}")]
    User(#[from] UserError),
    #[error(
        "cannot read the source as user {user:?}: {reason}; run the agent as root, or name the \
         agent's own user (for transfers that name none: `[file] default_source_user = \"\"`)"
    )]
    Switch { user: String, reason: String },
    #[error("the thread reading as user {user:?} has stopped; retry the transfer")]
    Gone { user: String },
}

/// Whose rights a source task's files are opened with.
#[derive(Clone)]
pub struct SourceAccount {
    /// As named ("" = the agent's own user, by default).
    name: String,
    /// `None`: the agent's own rights.
    thread: Option<Arc<ReaderThread>>,
}

/// A job for the reader thread.
type Job = Box<dyn FnOnce() + Send>;

/// A thread running as one user; it ends when the last handle is dropped.
struct ReaderThread {
    jobs: mpsc::Sender<Job>,
}

// === impl SourceAccount ===

impl SourceAccount {
    /// The agent's own rights.
    pub fn agent() -> Self {
        SourceAccount {
            name: String::new(),
            thread: None,
        }
    }

    /// `name`'s rights: "" or a user with the agent's own uid read as the
    /// agent; anyone else gets a reader thread. Blocking (NSS).
    pub fn resolve(name: &str) -> Result<Self, AccountError> {
        if name.is_empty() {
            return Ok(Self::agent());
        }
        let user = user::resolve(name)?;
        let thread = if is_agent_uid(user.uid) {
            None
        } else {
            Some(Arc::new(ReaderThread::start(user)?))
        };
        Ok(SourceAccount {
            name: name.to_owned(),
            thread,
        })
    }

    /// The user as named; "" for the agent's own.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` with this account's filesystem rights. Blocking; a panic in
    /// `f` is resumed on the caller's thread.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, AccountError> {
        match &self.thread {
            None => Ok(f()),
            Some(thread) => thread.run(f).ok_or_else(|| AccountError::Gone {
                user: self.name.clone(),
            }),
        }
    }

    /// Opens `path` for reading with this account's rights. Blocking.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let path = path.to_owned();
        self.run(move || File::open(path))
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

impl std::fmt::Debug for SourceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAccount")
            .field("name", &self.name)
            .field("switched", &self.thread.is_some())
            .finish()
    }
}

#[cfg(unix)]
fn is_agent_uid(uid: u32) -> bool {
    nix::unistd::geteuid().as_raw() == uid
}

#[cfg(not(unix))]
fn is_agent_uid(_uid: u32) -> bool {
    false
}

// === impl ReaderThread ===

impl ReaderThread {
    /// Starts the thread and waits until it holds `user`'s credentials.
    fn start(user: RunAs) -> Result<Self, AccountError> {
        let name = user.name.clone();
        let refused = |reason: String| AccountError::Switch {
            user: name.clone(),
            reason,
        };
        let (jobs, incoming) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("gse-read-as".into())
            .spawn(move || {
                let switched = switch_thread(&user);
                let ok = switched.is_ok();
                let _ = ready_tx.send(switched);
                if ok {
                    for job in incoming {
                        job();
                    }
                }
            })
            .map_err(|e| refused(format!("cannot start its thread: {e}")))?;
        ready
            .recv()
            .map_err(|_| refused("its thread ended at once".into()))?
            .map_err(refused)?;
        Ok(ReaderThread { jobs })
    }

    /// `None` when the thread is gone.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs.send(job).ok()?;
        match result.recv().ok()? {
            Ok(r) => Some(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Gives the calling thread (only) `user`'s groups, fsgid and fsuid.
#[cfg(target_os = "linux")]
fn switch_thread(user: &RunAs) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
    let groups: Vec<rustix::thread::Gid> = user
        .groups
        .iter()
        .map(|&g| rustix::thread::Gid::from_raw(g))
        .collect();
    rustix::thread::set_thread_groups(&groups)
        .map_err(|e| format!("cannot take the user's groups ({e})"))?;
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    setfsgid(gid);
    setfsuid(uid);
    // Neither call reports failure; each returns the id in force before
    // it, so asking again tells whether the switch took.
    if setfsgid(gid) != gid || setfsuid(uid) != uid {
        return Err("the kernel refused the agent's switch to that user".into());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn switch_thread(_user: &RunAs) -> Result<(), String> {
    Err("reading as another user is only supported on Linux".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The `Uid:` line of a thread's status: real, effective, saved, fs.
    fn uid_line() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn only_the_reader_thread_takes_the_users_rights() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("note: not root, skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = SourceAccount::resolve("nobody").unwrap();
        let uid = user::resolve("nobody").unwrap().uid;
        assert_eq!(nobody.run(uid_line).unwrap(), format!("0 0 0 {uid}"));
        let err = nobody.open(&secret).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // This thread, and the process, keep root's rights.
        assert_eq!(uid_line(), "0 0 0 0");
        File::open(&secret).unwrap();
        let root = SourceAccount::resolve("root").unwrap();
        assert!(root.thread.is_none());
        root.open(&secret).unwrap();
    }

    #[test]
    fn an_unknown_user_is_named() {
        let err = SourceAccount::resolve("gse-no-such-user-x").unwrap_err();
        assert!(matches!(err, AccountError::User(UserError::NoSuchUser(_))));
        assert!(err.to_string().contains("gse-no-such-user-x"), "{err}");
    }
}

//! The extra paths collectors dial (`data.ipc_links`,
//! `plugin.message_ipc_links`), made as symlinks to the agent's socket at
//! start ([`Links::make`]) and removed at stop ([`Links::remove`]).
//!
//! The agent runs as root and these paths are host-wide (`/var/run/...`,
//! `/usr/local/gse/...`), so a local user must not be able to steer where
//! they are made. Each parent directory is opened from `/` one component at
//! a time (`openat` with `O_NOFOLLOW`): every directory on the way must be
//! owned by root (or the agent's user) and not writable by group or others
//! unless sticky; missing ones are created 0755, root's. A symlink on the
//! way is followed only if root owns it (like `/var/run -> /run`): since its
//! directory passed the check, no other user could have planted it. The
//! link is made relative to the opened directory (`symlinkat`).
//!
//! Ownership: a path that already holds anything but a symlink to this
//! socket belongs to someone else (another agent, a GSE 1.0 install) and is
//! left alone with a warning. At stop a link is removed only if it still
//! points at this socket. (The script writer's walk in `task::scripts`
//! refuses every symlink; this one must follow the system's own.)

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

/// Mode of directories created on the way.
const DIR_MODE: u32 = 0o755;
/// Symlinks followed in one walk, at most (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// The links this agent made, to remove at stop.
#[derive(Debug, Default)]
pub struct Links {
    made: Vec<Made>,
}

#[derive(Debug)]
struct Made {
    dir: File,
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
            match readlinkat(m.dir.as_fd(), m.name.as_os_str()) {
                Ok(to) if Path::new(&to) == m.target => {
                    if let Err(e) = unlinkat(
                        m.dir.as_fd(),
                        m.name.as_os_str(),
                        UnlinkatFlags::NoRemoveDir,
                    ) {
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

fn make_one(target: &Path, link: &Path) -> Result<Made, String> {
    let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
        return Err("not a path to a file".into());
    };
    let dir = open_dir(parent)?;
    let made = |dir: File| Made {
        dir,
        name: name.to_os_string(),
        path: link.to_path_buf(),
        target: target.to_path_buf(),
    };
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => match symlinkat(target, dir.as_fd(), name) {
            Ok(()) => Ok(made(dir)),
            Err(e) => Err(format!("cannot make the symlink: {e}")),
        },
        Ok(st) if is(st.st_mode, SFlag::S_IFLNK) => {
            let to = readlinkat(dir.as_fd(), name).map_err(|e| format!("cannot read it: {e}"))?;
            if Path::new(&to) == target {
                Ok(made(dir))
            } else {
                Err(format!(
                    "the path is a symlink to {} (not this agent's); left alone",
                    Path::new(&to).display()
                ))
            }
        }
        Ok(_) => Err("the path exists and is not a symlink (not this agent's); left alone".into()),
        Err(e) => Err(format!("cannot check the path: {e}")),
    }
}

fn is(mode: u32, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == kind
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// One step of a walk.
enum Step {
    Name(OsString),
    Up,
}

fn steps(path: &Path) -> VecDeque<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Step::Name(n.to_os_string())),
            Component::ParentDir => Some(Step::Up),
            _ => None,
        })
        .collect()
}

/// Opens (creating what is missing) the directory `dir` as the module doc
/// says; the error names the component that is refused and why.
pub fn open_dir(dir: &Path) -> Result<File, String> {
    if !dir.is_absolute() {
        return Err(format!("{} is not an absolute path", dir.display()));
    }
    let root = || open("/", dir_flags(), Mode::empty()).map(File::from);
    let mut cur = root().map_err(|e| format!("cannot open /: {e}"))?;
    let mut at = PathBuf::from("/");
    trusted(&cur, &at)?;
    let mut todo = steps(dir);
    let mut hops = 0;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Up => {
                cur = enter(&cur, OsStr::new(".."), &at)?;
                at.pop();
                trusted(&cur, &at)?;
                continue;
            }
            Step::Name(name) => name,
        };
        at.push(&name);
        match step_into(&cur, &name, &at)? {
            Ok(next) => {
                trusted(&next, &at)?;
                cur = next;
            }
            Err(target) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(format!("too many symlinks resolving {}", dir.display()));
                }
                at.pop();
                if target.is_absolute() {
                    cur = root().map_err(|e| format!("cannot open /: {e}"))?;
                    at = PathBuf::from("/");
                }
                for s in steps(&target).into_iter().rev() {
                    todo.push_front(s);
                }
            }
        }
    }
    Ok(cur)
}

fn enter(cur: &File, name: &OsStr, at: &Path) -> Result<File, String> {
    openat(cur.as_fd(), name, dir_flags(), Mode::empty())
        .map(File::from)
        .map_err(|e| format!("cannot open {}: {e}", at.display()))
}

/// Opens `name` in `cur` as a directory (creating it if missing), or
/// returns the target of a root-owned symlink there.
fn step_into(cur: &File, name: &OsStr, at: &Path) -> Result<Result<File, PathBuf>, String> {
    let mut created = false;
    loop {
        match openat(cur.as_fd(), name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let dir = File::from(fd);
                if created {
                    // DIR_MODE whatever the agent's umask.
                    dir.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
                        .map_err(|e| format!("cannot set the mode of {}: {e}", at.display()))?;
                }
                return Ok(Ok(dir));
            }
            Err(Errno::ENOENT) if !created => {
                match mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(DIR_MODE)) {
                    Ok(()) | Err(Errno::EEXIST) => created = true,
                    Err(e) => return Err(format!("cannot create {}: {e}", at.display())),
                }
            }
            // O_NOFOLLOW|O_DIRECTORY on a symlink: ELOOP or ENOTDIR.
            Err(Errno::ELOOP | Errno::ENOTDIR) => return followable(cur, name, at).map(Err),
            Err(e) => return Err(format!("cannot open {}: {e}", at.display())),
        }
    }
}

/// The target of the symlink `name` in `cur`, if root owns it.
fn followable(cur: &File, name: &OsStr, at: &Path) -> Result<PathBuf, String> {
    let st = fstatat(cur.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| format!("cannot check {}: {e}", at.display()))?;
    if !is(st.st_mode, SFlag::S_IFLNK) {
        return Err(format!(
            "{} exists and is not a directory; remove it or choose another path",
            at.display()
        ));
    }
    if st.st_uid != 0 {
        return Err(format!(
            "{} is a symlink owned by uid {}, not root: another user could point it anywhere, so \
             it is not followed (remove it, or link a path of root's)",
            at.display(),
            st.st_uid
        ));
    }
    readlinkat(cur.as_fd(), name)
        .map(PathBuf::from)
        .map_err(|e| format!("cannot read {}: {e}", at.display()))
}

/// Why the opened directory `at` cannot be trusted, if it cannot: it must
/// be owned by root or the agent's user, and not writable by group or
/// others unless sticky.
fn trusted(dir: &File, at: &Path) -> Result<(), String> {
    let meta = dir
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", at.display()))?;
    let uid = meta.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is owned by uid {uid}, not root, so another user controls what is in it \
             (chown it to root, or choose another path)",
            at.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} is writable by group or others (mode {mode:04o}) without the sticky bit, so \
             another user could swap what is in it (run `chmod go-w {}`)",
            at.display(),
            at.display()
        ));
    }
    Ok(())
}

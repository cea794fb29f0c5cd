//! The Unix side of `safe_dir`: directories are descriptors, walked from
//! `/` with `openat(O_NOFOLLOW|O_DIRECTORY)`; entries are made relative to
//! them (`openat`, `renameat`, `symlinkat`, `unlinkat`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Permissions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};

use super::{DIR_MODE, DirError, DirOpener, MAX_LINKS};

/// An open directory that passed the checks, and the path it was reached
/// by (for messages). Cheap to clone (one shared descriptor).
#[derive(Clone, Debug)]
pub struct SafeDir {
    fd: Arc<File>,
    path: PathBuf,
    /// Its mode bits when it was checked (the policy looks at a parent's).
    mode: u32,
}

/// One step of a walk.
enum Part {
    Root,
    Up,
    Name(OsString),
}

/// What a name in a directory turned out to be.
enum Step {
    Dir(SafeDir),
    /// A link to follow: where it is, and its text.
    Link(PathBuf, OsString),
}

fn parts(path: &Path) -> Vec<Part> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => Some(Part::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Part::Up),
            Component::Normal(name) => Some(Part::Name(name.to_owned())),
        })
        .collect()
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

// === impl DirOpener (walking) ===

impl DirOpener {
    /// Opens the absolute directory `path` from `/` (see the module docs).
    pub fn open(&self, path: &Path) -> Result<SafeDir, DirError> {
        if !path.is_absolute() {
            return Err(DirError::NotAbsolute { path: path.into() });
        }
        let root = SafeDir::root()?;
        self.check(&root.path, root.uid()?, root.mode, None)?;
        let mut stack = vec![root];
        let mut todo: VecDeque<Part> = parts(path).into();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            let name = match part {
                Part::Root => {
                    stack.truncate(1);
                    continue;
                }
                Part::Up => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                Part::Name(name) => name,
            };
            let parent = stack.last().expect("the root stays");
            match self.step(parent, &name, todo.is_empty(), true)? {
                Step::Dir(dir) => stack.push(dir),
                Step::Link(at, text) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(DirError::TooManyLinks { path: at });
                    }
                    for part in parts(Path::new(&text)).into_iter().rev() {
                        todo.push_front(part);
                    }
                }
            }
        }
        Ok(stack.pop().expect("the root stays"))
    }

    /// Opens (or creates) the directory `name` in `parent`; a link there is
    /// refused whoever made it.
    pub fn child(&self, parent: &SafeDir, name: &str) -> Result<SafeDir, DirError> {
        match self.step(parent, OsStr::new(name), false, false)? {
            Step::Dir(dir) => Ok(dir),
            Step::Link(path, _) => Err(DirError::Symlink {
                path,
                reason: "inside the directory written to; links there are never followed \
                         (remove it)"
                    .into(),
            }),
        }
    }

    /// Opens `name` in `parent`, creating it if allowed; `last` says it is
    /// the directory asked for; `follow` lets root's links through.
    fn step(
        &self,
        parent: &SafeDir,
        name: &OsStr,
        last: bool,
        follow: bool,
    ) -> Result<Step, DirError> {
        let path = parent.path.join(name);
        let mut created = false;
        let fd = loop {
            match openat(parent.fd.as_fd(), name, dir_flags(), Mode::empty()) {
                Ok(fd) => break File::from(fd),
                Err(Errno::ENOENT) if self.create && !created => {
                    match mkdirat(parent.fd.as_fd(), name, Mode::from_bits_truncate(DIR_MODE)) {
                        Ok(()) => created = true,
                        // Made by someone else meanwhile: open and check it.
                        Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(DirError::Create {
                                path,
                                source: e.into(),
                            });
                        }
                    }
                }
                Err(Errno::ENOENT) => return Err(DirError::Missing { path }),
                // Linux says ENOTDIR for O_NOFOLLOW|O_DIRECTORY on a link.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return self.not_a_dir(parent, name, path, follow);
                }
                Err(e) => {
                    return Err(DirError::Open {
                        path,
                        source: e.into(),
                    });
                }
            }
        };
        let mut dir = SafeDir {
            fd: Arc::new(fd),
            path,
            mode: 0,
        };
        if created {
            self.finish_created(&dir, last)?;
        }
        let meta = dir.fd.metadata().map_err(|e| dir.open_err(e))?;
        dir.mode = meta.mode() & 0o7777;
        self.check(&dir.path, meta.uid(), dir.mode, Some(parent.mode))?;
        Ok(Step::Dir(dir))
    }

    /// `name` is not a directory: a link to follow, or the error. The
    /// entry is opened once (`O_PATH|O_NOFOLLOW`) and its owner and text
    /// are read through that descriptor, so a name swapped in between
    /// cannot pass one link's owner off with another link's text.
    fn not_a_dir(
        &self,
        parent: &SafeDir,
        name: &OsStr,
        path: PathBuf,
        follow: bool,
    ) -> Result<Step, DirError> {
        let open_err = |e: Errno| DirError::Open {
            path: path.clone(),
            source: e.into(),
        };
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let entry =
            File::from(openat(parent.fd.as_fd(), name, flags, Mode::empty()).map_err(open_err)?);
        let stat = fstat(entry.as_fd()).map_err(open_err)?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK {
            return Err(DirError::NotADir { path });
        }
        if !follow {
            return Ok(Step::Link(path, OsString::new()));
        }
        if !super::is_root_or_agent(stat.st_uid) {
            return Err(DirError::Symlink {
                path,
                reason: format!(
                    "made by uid {}; only links made by root are followed (remove it, or name \
                     the directory it points to)",
                    stat.st_uid
                ),
            });
        }
        // An empty name reads the link the descriptor is (readlinkat(2)).
        let text = readlinkat(entry.as_fd(), "").map_err(open_err)?;
        Ok(Step::Link(path, text))
    }

    /// A directory made here: 0755 whatever the umask, and given away when
    /// it is the one asked for.
    fn finish_created(&self, dir: &SafeDir, last: bool) -> Result<(), DirError> {
        dir.fd
            .set_permissions(Permissions::from_mode(DIR_MODE))
            .map_err(|source| DirError::Create {
                path: dir.path.clone(),
                source,
            })?;
        if let Some((uid, gid)) = self.give_created.filter(|_| last) {
            std::os::unix::fs::fchown(&*dir.fd, Some(uid), Some(gid)).map_err(|source| {
                DirError::Chown {
                    path: dir.path.clone(),
                    who: self
                        .trusted
                        .as_ref()
                        .map_or_else(|| format!("uid {uid}"), |t| t.who.clone()),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

// === impl SafeDir ===

impl SafeDir {
    fn root() -> Result<SafeDir, DirError> {
        let path = PathBuf::from("/");
        let open_err = |source| DirError::Open {
            path: path.clone(),
            source,
        };
        let fd = File::from(
            openat(nix::fcntl::AT_FDCWD, "/", dir_flags(), Mode::empty())
                .map_err(|e| open_err(e.into()))?,
        );
        let mode = fd.metadata().map_err(open_err)?.mode() & 0o7777;
        Ok(SafeDir {
            fd: Arc::new(fd),
            path,
            mode,
        })
    }

    fn uid(&self) -> Result<u32, DirError> {
        Ok(self.fd.metadata().map_err(|e| self.open_err(e))?.uid())
    }

    fn open_err(&self, source: io::Error) -> DirError {
        DirError::Open {
            path: self.path.clone(),
            source,
        }
    }

    /// The path it was reached by (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory itself (to change its owner or mode).
    pub fn as_file(&self) -> &File {
        &self.fd
    }

    /// Creates the file `name` here: exclusively, never through a link.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    /// Renames `from` over `to`, both here (a link at `to` is replaced).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(renameat(self.fd.as_fd(), from, self.fd.as_fd(), to)?)
    }

    /// Removes the file or link `name` here.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        Ok(unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Makes `name` here a symbolic link with the text `target`
    /// (`AlreadyExists` if the name is taken).
    pub fn symlink(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        Ok(symlinkat(target, self.fd.as_fd(), name)?)
    }

    /// The text of the symbolic link `name` here (`InvalidInput` if it is
    /// not a link).
    pub fn read_link(&self, name: &OsStr) -> io::Result<PathBuf> {
        Ok(readlinkat(self.fd.as_fd(), name)?.into())
    }

    /// Gives the entry `name` here (a link: the link itself) to uid:gid.
    pub fn lchown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        Ok(fchownat(
            self.fd.as_fd(),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Flushes the directory's entries (renames) to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }
}

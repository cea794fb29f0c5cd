//! Putting verified content in place on a target: temp file, fsync, owner,
//! mode, rename, directory fsync, all relative to directory descriptors.
//!
//! Every write starts by opening the entry's directory with
//! [`crate::safe_dir`] ([`open_parent`]): the target directory is walked
//! from `/` without following any link but root's, a directory in a parent
//! others may write in (/tmp) must be owned by root, the agent or the
//! files' owner, and inside the target no link is ever followed; so a
//! local user's planted link or directory cannot redirect a write (703).
//! Every file is written to a temporary name in that directory
//! ([`TempFile`], `.<name>.gse-tmp-<random>`, created exclusively, mode
//! 0600) and renamed over the final name only once complete and verified,
//! so a half-written file never appears under the final name (F1) and a
//! link at the final name is replaced, not followed. Also here: the
//! direct-transfer helper for small files ([`write_small_file`], F2),
//! directories ([`install_dir`], [`set_dir_mode`]) and links
//! ([`install_symlink`]). Piece-by-piece writing is `writer.rs`. All of it
//! is blocking: call from `spawn_blocking`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::digest::{Blake3Hash, FileDigest, md5_hex};
use super::target_path::{TargetPath, TargetPathError};
use crate::safe_dir::{DirError, DirOpener, Policy, SafeDir};

pub use crate::safe_dir::{TempFile, is_temp_file_name};

mod owner;
#[cfg(all(test, unix))]
mod tests;

pub use owner::Owner;

/// Mode of directories created because they were missing (`auto_mkdir`).
pub const DEFAULT_DIR_MODE: u32 = crate::safe_dir::DIR_MODE;
/// Mode of temporary files while they are written.
const TEMP_MODE: u32 = 0o600;

/// How a transfer's target side wants files installed (COMPAT §2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// Mode for every file, instead of the source's (`permission`).
    pub permission: Option<u32>,
    /// Owner for every file and link (`owner`); `None` keeps the agent's.
    pub owner: Option<Owner>,
    /// Create missing directories with [`DEFAULT_DIR_MODE`] (`auto_mkdir`);
    /// without it a missing directory is an error.
    pub auto_mkdir: bool,
}

/// Why content could not be installed on the target.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Path(#[from] TargetPathError),
    #[error("unsafe target directory: {0}")]
    Dir(#[from] DirError),
    #[error("target directory {dir:?} does not exist; create it or set auto_mkdir")]
    MissingDir { dir: PathBuf },
    #[error("cannot create directory {path:?}: a {what} is in the way; remove it")]
    InTheWay { path: PathBuf, what: &'static str },
    #[error(
        "{path:?}: the received content does not match the manifest's {what}; nothing was installed, fetch the file again"
    )]
    Mismatch { path: PathBuf, what: &'static str },
    #[error("cannot {op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("owner {owner:?}: no such {what} on this host; create it or choose another owner")]
    NoSuchOwner { owner: String, what: &'static str },
    #[error("cannot look up owner {owner:?} in this host's user database: {reason}")]
    OwnerLookup { owner: String, reason: String },
    #[error("setting a file's owner is not supported on this platform; leave owner empty")]
    OwnerUnsupported,
}

pub(super) fn io_err(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> InstallError + use<> {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

impl InstallOptions {
    /// The mode a file with the source's `mode` gets.
    pub fn file_mode(&self, source_mode: u32) -> u32 {
        self.permission.unwrap_or(source_mode) & 0o7777
    }
}

/// Opens the directory that will hold `target` (see the module docs),
/// creating missing ones ([`DEFAULT_DIR_MODE`]) with `auto_mkdir`; without
/// it a missing directory is [`InstallError::MissingDir`].
pub fn open_parent(target: &TargetPath, opts: &InstallOptions) -> Result<SafeDir, InstallError> {
    let missing = |e| match e {
        DirError::Missing { .. } => InstallError::MissingDir {
            dir: target.parent().into(),
        },
        e => InstallError::Dir(e),
    };
    let opener = opener(opts, opts.auto_mkdir);
    let mut dir = opener.open(target.root()).map_err(missing)?;
    for name in target.dirs() {
        dir = opener.child(&dir, name).map_err(missing)?;
    }
    Ok(dir)
}

/// Checks the target directory `root` before anything is fetched: it must
/// open safely, or be missing with `auto_mkdir`.
pub fn check_target_dir(root: &Path, opts: &InstallOptions) -> Result<(), InstallError> {
    match opener(opts, false).open(root) {
        Ok(_) => Ok(()),
        Err(DirError::Missing { .. }) if opts.auto_mkdir => Ok(()),
        Err(DirError::Missing { .. }) => Err(InstallError::MissingDir { dir: root.into() }),
        Err(e) => Err(e.into()),
    }
}

/// Target directories: nothing planted by a local user (module docs).
fn opener(opts: &InstallOptions, create: bool) -> DirOpener {
    let opener = DirOpener::new(Policy::NoPlanted).create(create);
    match &opts.owner {
        Some(owner) => opener.trust(owner.uid, format!("the files' owner {:?}", owner.name)),
        None => opener,
    }
}

/// Direct transfer (F2): checks `content` against `digest` (size, MD5 and
/// blake3) before touching the disk, then installs it through a temp file.
pub fn write_small_file(
    target: &TargetPath,
    content: &[u8],
    digest: &FileDigest,
    source_mode: u32,
    opts: &InstallOptions,
) -> Result<(), InstallError> {
    let mismatch = |what| InstallError::Mismatch {
        path: target.path().into(),
        what,
    };
    if content.len() as u64 != digest.size {
        return Err(mismatch("size"));
    }
    if md5_hex(content) != digest.md5 {
        return Err(mismatch("MD5"));
    }
    if Blake3Hash::of(content) != digest.blake3 {
        return Err(mismatch("blake3 hash"));
    }
    let temp = create_temp(target, opts)?;
    temp.file()
        .write_all(content)
        .map_err(io_err("write", &temp.path()))?;
    commit(
        temp,
        target,
        opts.file_mode(source_mode),
        opts.owner.as_ref(),
    )
}

/// Opens `target`'s directory and a temp file for it there.
pub(super) fn create_temp(
    target: &TargetPath,
    opts: &InstallOptions,
) -> Result<TempFile, InstallError> {
    let dir = open_parent(target, opts)?;
    TempFile::create(&dir, target.file_name(), TEMP_MODE)
        .map_err(io_err("create a temporary file in", target.parent()))
}

/// Sets owner then mode (chown clears set-id bits, so it goes first),
/// syncs, renames over the final name (relative to the directory opened at
/// creation) and syncs the directory so the rename survives a crash.
pub(super) fn commit(
    temp: TempFile,
    target: &TargetPath,
    mode: u32,
    owner: Option<&Owner>,
) -> Result<(), InstallError> {
    let temp_path = temp.path();
    set_owner_and_mode(temp.file(), &temp_path, mode, owner)?;
    temp.file().sync_all().map_err(io_err("sync", &temp_path))?;
    let dir = temp.dir().clone();
    temp.persist(target.file_name())
        .map_err(io_err("rename into place", target.path()))?;
    dir.sync()
        .map_err(io_err("sync directory", target.parent()))
}

/// Creates the directory `target` if missing ([`DEFAULT_DIR_MODE`]); an
/// existing directory is kept as is, anything else in the way (a file, a
/// link) is an error. Its final mode comes from [`set_dir_mode`].
pub fn install_dir(target: &TargetPath, opts: &InstallOptions) -> Result<(), InstallError> {
    let parent = open_parent(target, opts)?;
    opener(opts, true)
        .child(&parent, target.file_name())
        .map(drop)
        .map_err(in_the_way)
}

/// Gives the directory `target` its owner and `mode` (F6). Call it after
/// the directory's contents are written, deepest directory first, so a
/// read-only directory does not block writing its own children. The
/// directory is opened without following links, so a link swapped in
/// cannot redirect the change.
pub fn set_dir_mode(
    target: &TargetPath,
    mode: u32,
    opts: &InstallOptions,
) -> Result<(), InstallError> {
    let existing = InstallOptions {
        auto_mkdir: false,
        ..opts.clone()
    };
    let parent = open_parent(target, &existing)?;
    let dir = opener(opts, false)
        .child(&parent, target.file_name())
        .map_err(in_the_way)?;
    give_dir(&dir, target.path(), mode & 0o7777, opts.owner.as_ref())
}

#[cfg(unix)]
fn give_dir(
    dir: &SafeDir,
    path: &Path,
    mode: u32,
    owner: Option<&Owner>,
) -> Result<(), InstallError> {
    set_owner_and_mode(dir.as_file(), path, mode, owner)
}

#[cfg(not(unix))]
fn give_dir(
    _dir: &SafeDir,
    _path: &Path,
    _mode: u32,
    owner: Option<&Owner>,
) -> Result<(), InstallError> {
    match owner {
        Some(_) => Err(InstallError::OwnerUnsupported),
        None => Ok(()),
    }
}

/// A link or file where a directory entry goes.
fn in_the_way(e: DirError) -> InstallError {
    match e {
        DirError::Symlink { path, .. } => InstallError::InTheWay {
            path,
            what: "symbolic link",
        },
        DirError::NotADir { path } => InstallError::InTheWay { path, what: "file" },
        e => InstallError::Dir(e),
    }
}

/// Creates the symbolic link `target` -> `link_target` (replacing whatever
/// link or file is there, never a directory), via a temp name and rename.
/// The link text is not resolved or checked: links are data (F6).
#[cfg(unix)]
pub fn install_symlink(
    target: &TargetPath,
    link_target: &str,
    opts: &InstallOptions,
) -> Result<(), InstallError> {
    let dir = open_parent(target, opts)?;
    let temp = loop {
        let name = std::ffi::OsString::from(crate::safe_dir::temp_name(target.file_name()));
        match dir.symlink(Path::new(link_target), &name) {
            Ok(()) => break name,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("create a temporary link in", target.parent())(e)),
        }
    };
    let placed = (|| {
        if let Some(owner) = &opts.owner {
            dir.lchown(&temp, owner.uid, owner.gid)
                .map_err(io_err("change the owner of", &dir.path().join(&temp)))?;
        }
        dir.rename(&temp, target.file_name().as_ref())
            .map_err(io_err("rename into place", target.path()))
    })();
    if placed.is_err() {
        let _ = dir.remove_file(&temp);
    }
    placed?;
    dir.sync()
        .map_err(io_err("sync directory", target.parent()))
}

// === owner, mode ===

fn set_owner_and_mode(
    file: &File,
    path: &Path,
    mode: u32,
    owner: Option<&Owner>,
) -> Result<(), InstallError> {
    if let Some(owner) = owner {
        owner.apply(file, path)?;
    }
    #[cfg(unix)]
    let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
    #[cfg(not(unix))]
    let perms = {
        let mut p = file
            .metadata()
            .map_err(io_err("inspect", path))?
            .permissions();
        p.set_readonly(mode & 0o222 == 0);
        p
    };
    file.set_permissions(perms)
        .map_err(io_err("set the mode of", path))
}

//! Putting verified content in place on a target: temp file, fsync, owner,
//! mode, rename, directory fsync.
//!
//! Every file is written to a temporary name in its destination directory
//! ([`TempFile`], `.<name>.gse-tmp-<random>`, created exclusively, mode
//! 0600) and renamed over the final name only once complete and verified,
//! so a half-written file never appears under the final name (F1); the temp
//! file is removed when dropped without being committed. Also here: the
//! direct-transfer helper for small files ([`write_small_file`], F2),
//! directories ([`install_dir`], [`set_dir_mode`]) and links
//! ([`install_symlink`]). Piece-by-piece writing is `writer.rs`. All of it
//! is blocking: call from `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::digest::{Blake3Hash, FileDigest, md5_hex};
use super::target_path::{TargetPath, TargetPathError};

mod owner;
#[cfg(all(test, unix))]
mod tests;

pub use owner::Owner;

/// Mode of directories created because they were missing (`auto_mkdir`).
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Marks temporary files: `.<name>` + this + 16 hex digits.
const TEMP_MARKER: &str = ".gse-tmp-";
/// Longest part of the final name kept in a temp name, so the temp name
/// stays within the usual 255-byte limit.
const TEMP_NAME_KEEP: usize = 200;

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

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { op, path, source }
}

impl InstallOptions {
    /// The mode a file with the source's `mode` gets.
    pub fn file_mode(&self, source_mode: u32) -> u32 {
        self.permission.unwrap_or(source_mode) & 0o7777
    }
}

/// Makes sure the directory that will hold `target` exists: creates it
/// (and its parents, [`DEFAULT_DIR_MODE`]) with `auto_mkdir`, else fails.
pub fn prepare_parent(target: &TargetPath, auto_mkdir: bool) -> Result<(), InstallError> {
    let dir = target.parent();
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(InstallError::InTheWay {
                path: dir.into(),
                what: "file",
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", dir)(e)),
    }
    if !auto_mkdir {
        return Err(InstallError::MissingDir { dir: dir.into() });
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DEFAULT_DIR_MODE);
    builder
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    Ok(target.recheck()?)
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
    prepare_parent(target, opts.auto_mkdir)?;
    let temp = TempFile::create(target)?;
    temp.file()
        .write_all(content)
        .map_err(io_err("write", temp.path()))?;
    temp.commit(target, opts.file_mode(source_mode), opts.owner.as_ref())
}

/// Creates the directory `target` if missing ([`DEFAULT_DIR_MODE`]); an
/// existing directory is kept as is, anything else in the way (a file, a
/// link) is an error. Its final mode comes from [`set_dir_mode`].
pub fn install_dir(target: &TargetPath, opts: &InstallOptions) -> Result<(), InstallError> {
    prepare_parent(target, opts.auto_mkdir)?;
    let path = target.path();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(InstallError::InTheWay {
            path: path.into(),
            what: if meta.file_type().is_symlink() {
                "symbolic link"
            } else {
                "file"
            },
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, DEFAULT_DIR_MODE);
            builder
                .create(path)
                .map_err(io_err("create directory", path))
        }
        Err(e) => Err(io_err("inspect", path)(e)),
    }
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
    let path = target.path();
    let dir = open_dir_no_follow(path)?;
    set_owner_and_mode(&dir, path, mode & 0o7777, opts.owner.as_ref())
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
    prepare_parent(target, opts.auto_mkdir)?;
    let mut temp = TempLink::create(target, link_target)?;
    if let Some(owner) = &opts.owner {
        std::os::unix::fs::lchown(&temp.path, Some(owner.uid), Some(owner.gid))
            .map_err(io_err("change the owner of", &temp.path))?;
    }
    target.recheck()?;
    fs::rename(&temp.path, target.path()).map_err(io_err("rename into place", target.path()))?;
    temp.armed = false;
    sync_dir(target.parent())
}

/// Whether `name` is one of our temp files (for cleaning up after a crash).
pub fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(TEMP_MARKER).is_some_and(|(head, hex)| {
            head.len() > 1 && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

// === impl TempFile ===

/// A file being written under a temporary name; removed on drop unless
/// committed.
pub(super) struct TempFile {
    file: File,
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates `.<name>.gse-tmp-<random>` next to `target`, exclusively and
    /// readable by the agent only. The parent must exist.
    pub fn create(target: &TargetPath) -> Result<Self, InstallError> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        loop {
            let path = temp_path(target);
            match options.open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        armed: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create a temporary file", &path)(e)),
            }
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets owner then mode (chown clears set-id bits, so it goes first),
    /// syncs, re-checks the target path, renames over the final name and
    /// syncs the directory so the rename survives a crash.
    pub fn commit(
        mut self,
        target: &TargetPath,
        mode: u32,
        owner: Option<&Owner>,
    ) -> Result<(), InstallError> {
        set_owner_and_mode(&self.file, &self.path, mode, owner)?;
        self.file.sync_all().map_err(io_err("sync", &self.path))?;
        target.recheck()?;
        fs::rename(&self.path, target.path())
            .map_err(io_err("rename into place", target.path()))?;
        self.armed = false;
        sync_dir(target.parent())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A temporary symbolic link, removed on drop unless renamed into place.
#[cfg(unix)]
struct TempLink {
    path: PathBuf,
    armed: bool,
}

#[cfg(unix)]
impl TempLink {
    fn create(target: &TargetPath, link_target: &str) -> Result<Self, InstallError> {
        loop {
            let path = temp_path(target);
            match std::os::unix::fs::symlink(link_target, &path) {
                Ok(()) => return Ok(TempLink { path, armed: true }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create a temporary link", &path)(e)),
            }
        }
    }
}

#[cfg(unix)]
impl Drop for TempLink {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_path(target: &TargetPath) -> PathBuf {
    let name = target.file_name();
    let mut keep = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let suffix: u64 = rand::random();
    target
        .parent()
        .join(format!(".{}{TEMP_MARKER}{suffix:016x}", &name[..keep]))
}

// === owner, mode, sync ===

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

fn open_dir_no_follow(path: &Path) -> Result<File, InstallError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use nix::fcntl::OFlag;
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, flags.bits());
    }
    options.open(path).map_err(io_err("open directory", path))
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

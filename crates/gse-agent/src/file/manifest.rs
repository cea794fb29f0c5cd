//! What a transfer's source is: the [`Manifest`], built by [`ManifestBuilder`].
//!
//! The source agent expands a [`SourceSpec`] (a directory plus a
//! [`Selection`]: one file, the whole tree, a wildcard or a regex; COMPAT
//! §2.1) into entries, each with a relative path, kind, mode and, for
//! regular files, a [`FileDigest`] (pieces, blake3 per piece, whole-file
//! blake3 and MD5). Paths are UTF-8, '/'-separated, and pass
//! [`validate_relative`], so every target accepts them. Entries are sorted
//! by path, which puts every directory before its contents.
//!
//! Symbolic links inside the source are recorded as links (their target
//! text, unresolved) and never followed, even when they point outside the
//! source directory: the target gets the same link, not the file behind it.
//! Only what the caller names is followed: the source directory itself,
//! and the file of a [`Selection::File`]. FIFOs, sockets and devices are
//! listed in [`Manifest::skipped`], never read. Building is blocking (it
//! walks and hashes everything): call it from `spawn_blocking`. Sending the
//! manifest and serving pieces live elsewhere.

use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{FileDigest, digest_reader, piece_size_for};
use super::target_path::{TargetPathError, UnsafeReason, validate_relative};

#[cfg(all(test, unix))]
mod tests;
mod walk;

/// Most entries one manifest may hold, by default.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Longest relative path (in bytes) an entry may have, by default (Linux
/// `PATH_MAX`).
pub const DEFAULT_MAX_PATH_BYTES: usize = 4096;

/// Every file, directory and link a transfer sends, in path order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
    /// Relative paths of special files (FIFOs, sockets, devices) that the
    /// selection covered but that are not transferred.
    pub skipped: Vec<String>,
}

/// One thing to create on the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative, '/'-separated, never absolute, never `..`.
    pub path: String,
    /// Permission bits, `0o7777` at most (set-id and sticky bits included).
    pub mode: u32,
    pub kind: EntryKind,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File(FileDigest),
    Dir,
    /// A symbolic link; `target` is the link's text, exactly as read.
    Symlink {
        target: String,
    },
}

/// Where a transfer's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    /// The source `store_dir`.
    pub dir: PathBuf,
    pub selection: Selection,
}

/// Which files under [`SourceSpec::dir`] a transfer sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// One regular file in `dir`, by name (a symlink to one is followed).
    /// The entry's path is the name.
    File(String),
    /// The whole tree (F6; `file_name` ""): every file, directory (empty
    /// ones too) and link. Paths start with the directory's own name, so
    /// `/data/app` arrives as `<target>/app/...` (COMPAT §2.1).
    Tree,
    /// Files and links whose path relative to `dir` matches a glob (F7):
    /// `*` stays within one directory, `**/` crosses them (`**/*.conf`).
    Wildcard(String),
    /// Files and links whose whole path relative to `dir` matches a regex
    /// (F7; anchored at both ends: `.*\.log` matches `a/b.log`).
    Regex(String),
}

/// Why a source cannot be turned into a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("source {path:?} does not exist; check store_dir and file_name")]
    SourceMissing { path: PathBuf },
    #[error(
        "source {path:?} is not a directory; directory, wildcard and regex transfers need a directory as store_dir"
    )]
    SourceNotDir { path: PathBuf },
    #[error(
        "source {path:?} is {what}, not a regular file; name a file, or give an empty file_name to send a directory"
    )]
    NotAFile { path: PathBuf, what: &'static str },
    #[error(
        "cannot transfer directory {dir:?}: it has no name of its own (e.g. '/'); name a subdirectory"
    )]
    NoBaseName { dir: PathBuf },
    #[error(
        "cannot read {path:?}: {source}; check that it exists and that the source's account (the transfer's `user`) may read it"
    )]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path:?} shrank below {expected} bytes while being hashed; retry when nothing is truncating it"
    )]
    Shrank { path: PathBuf, expected: u64 },
    #[error("{path:?} has a name or link target that is not valid UTF-8; rename it to transfer it")]
    NotUtf8 { path: PathBuf },
    #[error("source file name {name:?} is not a plain file name: {reason}")]
    BadFileName { name: String, reason: &'static str },
    #[error("{path:?} cannot be transferred as named: {reason}; rename it")]
    UnsafeName { path: String, reason: UnsafeReason },
    #[error("path {path:?} is {len} bytes long, over the limit of {limit}; shorten it")]
    PathTooLong {
        path: String,
        len: usize,
        limit: usize,
    },
    #[error(
        "{dir:?} holds more than {limit} entries for this selection; send a smaller directory or a narrower pattern"
    )]
    TooManyEntries { dir: PathBuf, limit: usize },
    #[error("nothing under {dir:?} matches {selection}; check the pattern")]
    NothingMatched { dir: PathBuf, selection: String },
    #[error("wildcard {pattern:?} is invalid: {source}")]
    BadWildcard {
        pattern: String,
        source: Box<globset::Error>,
    },
    #[error("regular expression {pattern:?} is invalid: {source}")]
    BadRegex {
        pattern: String,
        source: Box<regex::Error>,
    },
}

/// Builds a [`Manifest`] from a [`SourceSpec`], within limits.
#[derive(Clone, Debug)]
pub struct ManifestBuilder {
    spec: SourceSpec,
    max_entries: usize,
    max_path_bytes: usize,
}

// === impl ManifestBuilder ===

impl ManifestBuilder {
    pub fn new(spec: SourceSpec) -> Self {
        ManifestBuilder {
            spec,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_path_bytes: DEFAULT_MAX_PATH_BYTES,
        }
    }

    /// Fails with [`ManifestError::TooManyEntries`] past `limit` entries.
    pub fn max_entries(mut self, limit: usize) -> Self {
        self.max_entries = limit;
        self
    }

    /// Fails with [`ManifestError::PathTooLong`] for longer relative paths.
    pub fn max_path_bytes(mut self, limit: usize) -> Self {
        self.max_path_bytes = limit;
        self
    }

    /// Walks and hashes the source. Blocking.
    pub fn build(&self) -> Result<Manifest, ManifestError> {
        if let Selection::File(name) = &self.spec.selection {
            return Ok(Manifest {
                entries: vec![self.single_file(name)?],
                skipped: Vec::new(),
            });
        }
        let walked = walk::Walk::new(&self.spec, self.max_entries, self.max_path_bytes)?.run()?;
        let entries = walked
            .found
            .into_iter()
            .map(|found| entry_for(found.rel, &found.abs, &found.meta))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            entries,
            skipped: walked.skipped,
        })
    }

    fn single_file(&self, name: &str) -> Result<ManifestEntry, ManifestError> {
        check_file_name(name)?;
        check_rel(name, self.max_path_bytes)?;
        let path = self.spec.dir.join(name);
        let (digest, mode) = hash_file(&path, Follow::Yes)?;
        Ok(ManifestEntry {
            path: name.to_owned(),
            mode,
            kind: EntryKind::File(digest),
        })
    }
}

// === impl SourceSpec ===

impl SourceSpec {
    /// Where the entry with manifest path `rel` is on this host (what a
    /// source serves its pieces from). A tree's paths start with the
    /// directory's own name, which is `dir` itself.
    pub fn source_path(&self, rel: &str) -> PathBuf {
        let rel = match self.selection {
            Selection::Tree => rel.split_once('/').map_or("", |(_, rest)| rest),
            _ => rel,
        };
        rel.split('/')
            .filter(|c| !c.is_empty())
            .fold(self.dir.clone(), |p, c| p.join(c))
    }
}

// === impl Manifest ===

impl Manifest {
    /// Total bytes of all regular files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(ManifestEntry::size).sum()
    }
}

impl ManifestEntry {
    /// Content bytes (0 for directories and links).
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File(digest) => digest.size,
            EntryKind::Dir | EntryKind::Symlink { .. } => 0,
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::File(name) => write!(f, "file {name:?}"),
            Selection::Tree => f.write_str("the whole directory"),
            Selection::Wildcard(p) => write!(f, "wildcard {p:?}"),
            Selection::Regex(p) => write!(f, "regular expression {p:?}"),
        }
    }
}

// === building entries ===

/// Whether opening a file may follow a symbolic link at its last component.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

fn check_file_name(name: &str) -> Result<(), ManifestError> {
    let reason = match name {
        "" => "it is empty (an empty file_name means the whole directory)",
        "." | ".." => "it names a directory",
        _ if name.contains('/') => "it contains '/'; put the directory in store_dir",
        _ => return Ok(()),
    };
    Err(ManifestError::BadFileName {
        name: name.to_owned(),
        reason,
    })
}

/// Applies the target's path rules and the length limit to a relative path.
pub(super) fn check_rel(rel: &str, max_bytes: usize) -> Result<(), ManifestError> {
    if let Err(TargetPathError::Unsafe { reason, .. }) = validate_relative(rel) {
        return Err(ManifestError::UnsafeName {
            path: rel.to_owned(),
            reason,
        });
    }
    if rel.len() > max_bytes {
        return Err(ManifestError::PathTooLong {
            path: rel.to_owned(),
            len: rel.len(),
            limit: max_bytes,
        });
    }
    Ok(())
}

fn entry_for(rel: String, abs: &Path, meta: &Metadata) -> Result<ManifestEntry, ManifestError> {
    let file_type = meta.file_type();
    let (kind, mode) = if file_type.is_dir() {
        (EntryKind::Dir, mode_of(meta))
    } else if file_type.is_symlink() {
        let target = fs::read_link(abs).map_err(|source| read_err(abs, source))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| ManifestError::NotUtf8 { path: abs.into() })?;
        (EntryKind::Symlink { target }, mode_of(meta))
    } else {
        let (digest, mode) = hash_file(abs, Follow::No)?;
        (EntryKind::File(digest), mode)
    };
    Ok(ManifestEntry {
        path: rel,
        mode,
        kind,
    })
}

/// Opens `path` (not following a final link unless `follow`), checks it is
/// a regular file, and digests its current length.
fn hash_file(path: &Path, follow: Follow) -> Result<(FileDigest, u32), ManifestError> {
    let file = open_source(path, follow)?;
    let meta = file.metadata().map_err(|e| read_err(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(ManifestError::NotAFile {
            path: path.into(),
            what,
        });
    }
    let size = meta.len();
    let digest = digest_reader(&file, size, piece_size_for(size)).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ManifestError::Shrank {
                path: path.into(),
                expected: size,
            }
        } else {
            read_err(path, e)
        }
    })?;
    Ok((digest, mode_of(&meta)))
}

fn open_source(path: &Path, follow: Follow) -> Result<File, ManifestError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO swapped in after the walk must not hang us.
        let mut flags = OFlag::O_NONBLOCK;
        if follow == Follow::No {
            flags |= OFlag::O_NOFOLLOW;
        }
        options.custom_flags(flags.bits());
    }
    #[cfg(not(unix))]
    let _ = follow;
    options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ManifestError::SourceMissing { path: path.into() },
        _ => read_err(path, e),
    })
}

pub(super) fn read_err(path: &Path, source: io::Error) -> ManifestError {
    ManifestError::Read {
        path: path.into(),
        source,
    }
}

/// Permission bits as the target should set them.
pub(super) fn mode_of(meta: &Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        match (meta.is_dir(), meta.permissions().readonly()) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        }
    }
}

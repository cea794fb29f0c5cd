//! Joining a manifest's relative path onto a target directory, safely.
//!
//! A manifest comes from another host, so its paths are untrusted input.
//! [`resolve`] is the only way to get a [`TargetPath`], and it guarantees:
//! - the relative path is plain: not empty or absolute, no `..` or `.`, no
//!   empty components, no NUL, no backslash, no Windows drive prefix
//!   ([`validate_relative`]; the manifest builder applies the same rule);
//! - no *existing* directory between the root and the final component is a
//!   symbolic link (each is `lstat`ed), so a transfer that would cross one
//!   fails (703) before anything is fetched.
//!
//! The final component itself may exist and may be a link: files and links
//! replace it with `rename`, which never follows it, and directories
//! refuse it (`install.rs`). That check is a snapshot; what makes writes
//! safe against a local user racing us is that they go through directory
//! descriptors opened without following links ([`crate::safe_dir`], used
//! by `install.rs`), not paths.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What is wrong with a relative path from a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeReason {
    #[error("it is empty")]
    Empty,
    #[error("it is absolute")]
    Absolute,
    #[error("it contains a '..' component")]
    ParentDir,
    #[error("it contains a '.' component")]
    CurrentDir,
    #[error("it contains an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it contains a backslash")]
    Backslash,
    #[error("it starts with a Windows drive prefix")]
    DrivePrefix,
}

/// Why a manifest path cannot be written under a target directory.
#[derive(Debug, thiserror::Error)]
pub enum TargetPathError {
    #[error("refusing manifest path {path:?}: {reason}; the source manifest is corrupt or hostile")]
    Unsafe { path: String, reason: UnsafeReason },
    #[error("target directory {root:?} is not an absolute path; give an absolute store_dir")]
    RootNotAbsolute { root: PathBuf },
    #[error(
        "refusing to write {path:?}: {link:?} is a symbolic link and could redirect the write; remove it or choose another target directory"
    )]
    SymlinkInPath { path: PathBuf, link: PathBuf },
    #[error(
        "cannot write {path:?}: {existing:?} exists and is not a directory; remove it or choose another target directory"
    )]
    NotADirectory { path: PathBuf, existing: PathBuf },
    #[error("cannot inspect {at:?} while checking {path:?}: {source}")]
    Inspect {
        path: PathBuf,
        at: PathBuf,
        source: io::Error,
    },
}

/// A checked place to write one manifest entry: `root/rel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPath {
    root: PathBuf,
    rel: String,
    path: PathBuf,
}

/// Checks that `rel` is a plain relative path (see the module header).
pub fn validate_relative(rel: &str) -> Result<(), TargetPathError> {
    reason_unsafe(rel).map_or(Ok(()), |reason| {
        Err(TargetPathError::Unsafe {
            path: rel.to_owned(),
            reason,
        })
    })
}

fn reason_unsafe(rel: &str) -> Option<UnsafeReason> {
    let bytes = rel.as_bytes();
    if rel.is_empty() {
        Some(UnsafeReason::Empty)
    } else if rel.contains('\0') {
        Some(UnsafeReason::Nul)
    } else if rel.contains('\\') {
        Some(UnsafeReason::Backslash)
    } else if rel.starts_with('/') {
        Some(UnsafeReason::Absolute)
    } else if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        Some(UnsafeReason::DrivePrefix)
    } else {
        rel.split('/').find_map(|c| match c {
            "" => Some(UnsafeReason::EmptyComponent),
            "." => Some(UnsafeReason::CurrentDir),
            ".." => Some(UnsafeReason::ParentDir),
            _ => None,
        })
    }
}

/// Validates `rel` and joins it onto `root`, refusing symbolic links in the
/// existing directories between them. Components that do not exist yet are
/// fine (they will be created). Blocking (one `lstat` per component).
pub fn resolve(root: &Path, rel: &str) -> Result<TargetPath, TargetPathError> {
    validate_relative(rel)?;
    if !root.is_absolute() {
        return Err(TargetPathError::RootNotAbsolute { root: root.into() });
    }
    let target = TargetPath {
        root: root.to_path_buf(),
        rel: rel.to_owned(),
        path: rel.split('/').fold(root.to_path_buf(), |p, c| p.join(c)),
    };
    target.check_parents()?;
    Ok(target)
}

// === impl TargetPath ===

impl TargetPath {
    /// The full path to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The target directory the path is under (trusted, from the API).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest's relative path.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The directory that holds the final component.
    pub fn parent(&self) -> &Path {
        self.path.parent().unwrap_or(&self.root)
    }

    /// The final component (never empty, `.` or `..`).
    pub fn file_name(&self) -> &str {
        self.rel.rsplit('/').next().unwrap_or(&self.rel)
    }

    /// The directories between the root and the final component, in order.
    pub fn dirs(&self) -> impl Iterator<Item = &str> {
        let parent = self.rel.rsplit_once('/').map_or("", |(dirs, _)| dirs);
        parent.split('/').filter(|c| !c.is_empty())
    }

    fn check_parents(&self) -> Result<(), TargetPathError> {
        let components: Vec<&str> = self.rel.split('/').collect();
        let mut at = self.root.clone();
        for component in &components[..components.len() - 1] {
            at.push(component);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(TargetPathError::SymlinkInPath {
                        path: self.path.clone(),
                        link: at,
                    });
                }
                Ok(meta) if !meta.is_dir() => {
                    return Err(TargetPathError::NotADirectory {
                        path: self.path.clone(),
                        existing: at,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(TargetPathError::Inspect {
                        path: self.path.clone(),
                        at,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(rel: &str) -> UnsafeReason {
        match validate_relative(rel) {
            Err(TargetPathError::Unsafe { reason, .. }) => reason,
            other => panic!("{rel:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn plain_relative_paths_are_accepted() {
        for ok in [
            "a",
            "a/b/c.txt",
            ".hidden",
            "a..b",
            "...",
            "ab:c",
            "dir/10:00.log",
        ] {
            validate_relative(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn escaping_or_odd_paths_are_refused() {
        assert_eq!(reason(""), UnsafeReason::Empty);
        assert_eq!(reason("/etc/passwd"), UnsafeReason::Absolute);
        assert_eq!(reason(".."), UnsafeReason::ParentDir);
        assert_eq!(reason("a/../../etc"), UnsafeReason::ParentDir);
        assert_eq!(reason("./a"), UnsafeReason::CurrentDir);
        assert_eq!(reason("a//b"), UnsafeReason::EmptyComponent);
        assert_eq!(reason("a/"), UnsafeReason::EmptyComponent);
        assert_eq!(reason("a\0b"), UnsafeReason::Nul);
        assert_eq!(reason("a\\..\\b"), UnsafeReason::Backslash);
        assert_eq!(reason("C:/Windows"), UnsafeReason::DrivePrefix);
        assert_eq!(reason("c:evil"), UnsafeReason::DrivePrefix);
    }

    #[test]
    fn resolve_joins_under_root() {
        let root = tempfile::tempdir().unwrap();
        let t = resolve(root.path(), "a/b/c.txt").unwrap();
        assert_eq!(t.path(), root.path().join("a").join("b").join("c.txt"));
        assert_eq!(t.parent(), root.path().join("a").join("b"));
        assert_eq!(t.file_name(), "c.txt");
        assert_eq!(t.rel(), "a/b/c.txt");
        assert_eq!(t.dirs().collect::<Vec<_>>(), ["a", "b"]);
        let top = resolve(root.path(), "top").unwrap();
        assert_eq!(top.parent(), root.path());
        assert_eq!(top.dirs().count(), 0);
    }

    #[test]
    fn relative_root_is_refused() {
        let err = resolve(Path::new("relative/dir"), "a").unwrap_err();
        assert!(
            matches!(err, TargetPathError::RootNotAbsolute { .. }),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlink_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/evil")).unwrap();
        let err = resolve(root.path(), "a/evil/passwd").unwrap_err();
        match &err {
            TargetPathError::SymlinkInPath { link, .. } => {
                assert_eq!(link, &root.path().join("a/evil"))
            }
            other => panic!("expected SymlinkInPath, got {other}"),
        }
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // The link itself as the final component is left to the caller.
        resolve(root.path(), "a/evil").unwrap();
    }

    #[test]
    fn file_in_the_way_is_reported() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("f"), b"x").unwrap();
        let err = resolve(root.path(), "f/g").unwrap_err();
        assert!(
            matches!(err, TargetPathError::NotADirectory { .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_components_are_fine() {
        let root = tempfile::tempdir().unwrap();
        resolve(root.path(), "not/yet/there.txt").unwrap();
    }
}

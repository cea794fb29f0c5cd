//! The Windows side of `safe_dir`: no `openat`, so directories are paths,
//! checked with `symlink_metadata` as they are walked (links refused) and
//! created when asked. Ownership checks are Unix-only. Untested here
//! (README: Windows compiles, is not tested).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{DirError, DirOpener};

/// A directory that was checked, by path.
#[derive(Clone, Debug)]
pub struct SafeDir {
    path: PathBuf,
}

impl DirOpener {
    /// Checks (or creates) every component of the absolute `path`.
    pub fn open(&self, path: &Path) -> Result<SafeDir, DirError> {
        if !path.is_absolute() {
            return Err(DirError::NotAbsolute { path: path.into() });
        }
        let mut at = PathBuf::new();
        for component in path.components() {
            at.push(component);
            if at.parent().is_some() {
                self.one(&at)?;
            }
        }
        Ok(SafeDir { path: at })
    }

    /// The directory `name` in `parent`, created when allowed.
    pub fn child(&self, parent: &SafeDir, name: &str) -> Result<SafeDir, DirError> {
        let path = parent.path.join(name);
        self.one(&path)?;
        Ok(SafeDir { path })
    }

    fn one(&self, path: &Path) -> Result<(), DirError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(DirError::Symlink {
                path: path.into(),
                reason: "(links are not followed on this platform; name the real directory)".into(),
            }),
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(DirError::NotADir { path: path.into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.create => fs::create_dir(path)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists if path.is_dir() => Ok(()),
                    _ => Err(e),
                })
                .map_err(|source| DirError::Create {
                    path: path.into(),
                    source,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(DirError::Missing { path: path.into() })
            }
            Err(source) => Err(DirError::Open {
                path: path.into(),
                source,
            }),
        }
    }
}

impl SafeDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create_file(&self, name: &OsStr, _mode: u32) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))
    }

    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))
    }

    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    pub fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

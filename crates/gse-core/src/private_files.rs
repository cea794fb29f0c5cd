//! Files that hold secrets (keys, app secrets, the state store, configs
//! with credentials) and the directories they live in: created private
//! (0600 files, 0700 dirs) from the first byte, never made private
//! afterwards with a chmod that another local user could race.
//!
//! [`write_private`] replaces a file atomically (a new 0600 temp file
//! beside it, fsync, rename), [`create_private_dir`] makes a 0700
//! directory, and [`exposure`] tells `check-config` which secret-holding
//! file another user can read. On non-unix targets the modes are the
//! platform's defaults.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A secret-holding file or directory that others can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    pub path: PathBuf,
    /// The permission bits (`0o644`, ...).
    pub mode: u32,
    pub is_dir: bool,
    /// What it holds ("a private key", "app secrets", ...).
    pub holds: String,
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (who, fix) = if self.is_dir {
            ("accessible", "700")
        } else {
            ("readable", "600")
        };
        write!(
            f,
            "{} holds {} and is {who} by group or others (mode {:04o}): any local user can read it; run `chmod {fix} {}`",
            self.path.display(),
            self.holds,
            self.mode,
            self.path.display()
        )
    }
}

/// Whether `path` (a secret-holding file or directory) grants any
/// permission to group or others. `None` when private or missing.
pub fn exposure(path: &Path, holds: &str) -> Option<Exposure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).ok()?;
        let mode = meta.permissions().mode() & 0o7777;
        (mode & 0o077 != 0).then(|| Exposure {
            path: path.to_path_buf(),
            mode,
            is_dir: meta.is_dir(),
            holds: holds.to_string(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, holds);
        None
    }
}

/// Creates `dir` (and missing parents) with mode 0700 for every directory
/// it creates. An existing directory is left as it is: [`exposure`] reports
/// one that is too open.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// A directory this process owns and keeps secrets in (a server's data
/// dir, quickstart's dir): created 0700, or closed to group and others
/// when it already exists open. Returns the old mode when it had to close it.
pub fn make_private_dir(dir: &Path) -> io::Result<Option<u32>> {
    create_private_dir(dir)?;
    let Some(open) = exposure(dir, "") else {
        return Ok(None);
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(open.mode & 0o7700))?;
    }
    Ok(Some(open.mode))
}

/// Creates `path` as an empty 0600 file if it does not exist (so that a
/// library which creates it later, like SQLite, finds it private).
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    match private_options().create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes`, atomically and privately: a new 0600 temp
/// file in the same directory (O_EXCL: never through a planted link),
/// fsync, rename over `path`.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = private_options().create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn private_options() -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    path.with_file_name(format!(".{name}.{nonce:016x}.tmp"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn written_files_and_made_dirs_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let f = dir.join("secret.json");
        write_private(&f, b"one").unwrap();
        write_private(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(make_private_dir(&dir).unwrap(), Some(0o755));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(make_private_dir(&dir).unwrap(), None);
        let db = dir.join("db");
        ensure_private_file(&db).unwrap();
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn exposure_names_the_file_and_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("k.key");
        fs::write(&f, b"k").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let e = exposure(&f, "a private key").expect("0644 is exposed");
        let text = e.to_string();
        assert!(text.contains("k.key") && text.contains("0644"), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure(&f, "a private key"), None);
        assert_eq!(exposure(&root.path().join("missing"), "x"), None);
    }
}

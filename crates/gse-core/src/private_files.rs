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
///
/// Refused (`PermissionDenied`, saying why) when the directory or one of
/// its ancestors belongs to another user or is writable by others without
/// the sticky bit: such a user could have planted it (with a CA key of
/// their own in it) or could swap it after the check.
pub fn make_private_dir(dir: &Path) -> io::Result<Option<u32>> {
    create_private_dir(dir)?;
    if let Some(why) = untrusted_dir(dir) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
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

/// Why `dir` (which exists) cannot be trusted to keep this process's
/// secrets, if it cannot: it, or a directory above it, belongs to a user
/// other than root and this process, or is writable by group or others
/// without the sticky bit (as /tmp has it).
pub fn untrusted_dir(dir: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = nix::unistd::Uid::effective().as_raw();
        let real = match dir.canonicalize() {
            Ok(p) => p,
            Err(e) => return Some(format!("cannot resolve {}: {e}", dir.display())),
        };
        for (depth, d) in real.ancestors().enumerate() {
            let meta = match fs::metadata(d) {
                Ok(m) => m,
                Err(e) => return Some(format!("cannot inspect {}: {e}", d.display())),
            };
            let (owner, mode) = (meta.uid(), meta.mode());
            if owner != 0 && owner != me {
                return Some(format!(
                    "{} belongs to uid {owner}, not to this user (uid {me}) or root: that user could have planted {}; remove it or choose another directory",
                    d.display(),
                    if depth == 0 {
                        "it"
                    } else {
                        "or swap what is inside"
                    }
                ));
            }
            let others_write = mode & 0o022 != 0;
            let sticky = mode & 0o1000 != 0;
            if others_write && !(sticky && depth > 0) {
                return Some(format!(
                    "{} is writable by group or others (mode {:04o}): another user could swap what is inside; chmod go-w it or choose another directory",
                    d.display(),
                    mode & 0o7777
                ));
            }
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
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
    fn a_directory_of_another_user_is_not_made_private_but_refused() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to give a directory to another user");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let planted = root.path().join("planted");
        fs::create_dir(&planted).unwrap();
        nix::unistd::chown(&planted, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = make_private_dir(&planted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("uid 65534"), "{err}");
        // Inside it, even a directory we make ourselves is refused.
        let err = make_private_dir(&planted.join("mine")).unwrap_err();
        assert!(err.to_string().contains("planted"), "{err}");
        // A world-writable (not sticky) parent is refused too.
        let open = root.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = make_private_dir(&open.join("qs")).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        // Under a sticky world-writable dir (like /tmp) our own dir is fine.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        make_private_dir(&open.join("qs")).unwrap();
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

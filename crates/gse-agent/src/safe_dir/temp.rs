//! Write-then-rename in a [`SafeDir`]: a file is written under a fresh
//! temporary name (`.<name>.gse-tmp-<16 hex>`, created exclusively, never
//! through a link) and renamed over its final name only when complete, so
//! no one ever sees half a file and a link planted at the final name is
//! replaced, not followed. Dropped without [`TempFile::persist`], the temp
//! file is removed.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::SafeDir;

/// Marks temporary files: `.<name>` + this + 16 hex digits.
const TEMP_MARKER: &str = ".gse-tmp-";
/// Longest part of the final name kept in a temp name, so the temp name
/// stays within the usual 255-byte limit.
const TEMP_NAME_KEEP: usize = 200;

/// A file being written under a temporary name in its final directory.
#[derive(Debug)]
pub struct TempFile {
    dir: SafeDir,
    name: OsString,
    file: File,
    armed: bool,
}

impl TempFile {
    /// Creates a temp file for `final_name` in `dir` with `mode` (before
    /// the umask).
    pub fn create(dir: &SafeDir, final_name: &str, mode: u32) -> io::Result<Self> {
        loop {
            let name = OsString::from(temp_name(final_name));
            match dir.create_file(&name, mode) {
                Ok(file) => {
                    return Ok(TempFile {
                        dir: dir.clone(),
                        name,
                        file,
                        armed: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it is (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// The directory it is in.
    pub fn dir(&self) -> &SafeDir {
        &self.dir
    }

    /// Renames it over `final_name` in the same directory: whatever is
    /// there (a file, a link) is replaced, never followed.
    pub fn persist(mut self, final_name: &str) -> io::Result<()> {
        self.dir.rename(&self.name, final_name.as_ref())?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

/// A fresh `.<name>.gse-tmp-<16 hex>` for `final_name` (at most
/// [`TEMP_NAME_KEEP`] bytes of it kept).
pub fn temp_name(final_name: &str) -> String {
    let mut keep = final_name.len().min(TEMP_NAME_KEEP);
    while !final_name.is_char_boundary(keep) {
        keep -= 1;
    }
    let suffix: u64 = rand::random();
    format!(".{}{TEMP_MARKER}{suffix:016x}", &final_name[..keep])
}

/// Whether `name` is one of our temp files (for cleaning up after a crash).
pub fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(TEMP_MARKER).is_some_and(|(head, hex)| {
            head.len() > 1 && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

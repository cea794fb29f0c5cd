//! Writing one target file from pieces that arrive in any order (F1, F5).
//!
//! Start at [`PieceWriter`]. Each piece is checked against its blake3 hash
//! in the manifest *before* it touches the disk: a corrupt piece is refused
//! with [`PieceError::Corrupt`] (refetch it elsewhere) and never written.
//! Good pieces go to their offset in a temp file (`install.rs`); the have
//! bitmap ([`PieceWriter::have`]) is what we announce to peers.
//! [`PieceWriter::finish`] re-reads the whole file to check the whole-file
//! blake3 and MD5, then commits (fsync, owner, mode, rename, directory
//! fsync); with [`PieceWriter::check_as_written`] that check is done as
//! the file fills up in order instead. Dropping or [`PieceWriter::abort`]ing removes the temp file, so
//! a half file never appears under the final name. Blocking: callers use
//! `spawn_blocking`. Choosing which piece to fetch is `picker.rs`.

use std::fs::File;
use std::io::{self, Seek};
use std::path::PathBuf;

use md5::{Digest as _, Md5};

use super::digest::{Blake3Hash, DigestError, FileDigest, digest_reader};
use super::install::{self, InstallError, InstallOptions, Owner, TempFile, io_err};
use super::piece_set::PieceSet;
use super::target_path::TargetPath;

#[cfg(all(test, unix))]
mod tests;

/// Why a piece or a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("{path:?}: the manifest's description of the file is unusable: {source}")]
    BadDigest { path: PathBuf, source: DigestError },
    #[error(
        "{path:?}: there is no piece {index} (the file has {count}); the sender is out of step"
    )]
    OutOfRange {
        path: PathBuf,
        index: u32,
        count: u32,
    },
    #[error(
        "{path:?}: piece {index} ({got} bytes, {expected} expected) does not match its blake3 hash; it was not written, fetch it again from another peer"
    )]
    Corrupt {
        path: PathBuf,
        index: u32,
        expected: usize,
        got: usize,
    },
    #[error("{path:?}: piece {index} is not here yet, so it cannot be served")]
    NotHave { path: PathBuf, index: u32 },
    #[error(
        "{path:?}: {missing} of {count} pieces are still missing (first: {first}); fetch them before finishing"
    )]
    Incomplete {
        path: PathBuf,
        missing: u32,
        count: u32,
        first: u32,
    },
    #[error(transparent)]
    Install(#[from] InstallError),
}

/// One target file being assembled from verified pieces.
pub struct PieceWriter {
    target: TargetPath,
    digest: FileDigest,
    mode: u32,
    owner: Option<Owner>,
    temp: TempFile,
    have: PieceSet,
    check: Option<InOrderCheck>,
}

/// The whole-file hashes, computed over what is on disk as the file fills
/// up from its start.
struct InOrderCheck {
    /// Pieces `0..next` are hashed.
    next: u32,
    whole: blake3::Hasher,
    md5: Md5,
    buf: Vec<u8>,
}

/// Read-back chunk of the in-order check.
const CHECK_CHUNK: usize = 64 * 1024;

// === impl PieceWriter ===

impl PieceWriter {
    /// Validates `digest`, makes sure the directory exists (or creates it
    /// with `auto_mkdir`), and creates the temp file at full size. The
    /// final mode is `opts.permission`, else `source_mode`.
    pub fn create(
        target: TargetPath,
        digest: FileDigest,
        source_mode: u32,
        opts: &InstallOptions,
    ) -> Result<Self, PieceError> {
        digest.validate().map_err(|source| PieceError::BadDigest {
            path: target.path().into(),
            source,
        })?;
        let temp = install::create_temp(&target, opts)?;
        // Sparse on most filesystems; makes every piece offset valid.
        temp.file()
            .set_len(digest.size)
            .map_err(io_err("size", &temp.path()))?;
        Ok(PieceWriter {
            have: PieceSet::new(digest.piece_count()),
            mode: opts.file_mode(source_mode),
            owner: opts.owner.clone(),
            target,
            digest,
            temp,
            check: None,
        })
    }

    /// Checks the whole file as it fills up, instead of all at [`finish`]:
    /// once a piece and every piece before it are written, they are read
    /// back from disk (normally the page cache) into the whole-file blake3
    /// and MD5. The hashing is spread over the download (pieces arriving
    /// roughly in order) rather than done at its end. The price: a change
    /// made to the temp file after its piece was read back goes unseen.
    ///
    /// [`finish`]: PieceWriter::finish
    pub fn check_as_written(mut self) -> Self {
        self.check = Some(InOrderCheck {
            next: 0,
            whole: blake3::Hasher::new(),
            md5: Md5::new(),
            buf: Vec::new(),
        });
        self
    }

    /// Verifies piece `index` and writes it at its offset. Returns `false`
    /// (and writes nothing) when the piece was already here.
    pub fn write_piece(&mut self, index: u32, bytes: &[u8]) -> Result<bool, PieceError> {
        let (offset, len) = self.range(index)?;
        if self.have.contains(index) {
            return Ok(false);
        }
        if !self.digest.piece_matches(index, bytes) {
            return Err(PieceError::Corrupt {
                path: self.target.path().into(),
                index,
                expected: len,
                got: bytes.len(),
            });
        }
        write_all_at(self.temp.file(), bytes, offset)
            .map_err(|e| io_err("write a piece to", &self.temp.path())(e))?;
        self.have.insert(index);
        self.advance_check()?;
        Ok(true)
    }

    /// Hashes the pieces that now continue the checked prefix.
    fn advance_check(&mut self) -> Result<(), PieceError> {
        let Some(check) = &mut self.check else {
            return Ok(());
        };
        while self.have.contains(check.next) {
            let (mut offset, len) = self
                .digest
                .piece_range(check.next)
                .expect("a piece we have");
            let end = offset + len as u64;
            check.buf.resize(CHECK_CHUNK, 0);
            while offset < end {
                let n = (end - offset).min(CHECK_CHUNK as u64) as usize;
                let chunk = &mut check.buf[..n];
                read_exact_at(self.temp.file(), chunk, offset)
                    .map_err(|e| io_err("read back", &self.temp.path())(e))?;
                check.whole.update(chunk);
                check.md5.update(&*chunk);
                offset += n as u64;
            }
            check.next += 1;
        }
        if check.next == self.have.len() {
            check.buf = Vec::new();
        }
        Ok(())
    }

    /// Reads back piece `index` (one we have) to serve it to a peer. Not
    /// re-verified here: the receiving side verifies every piece.
    pub fn read_piece(&self, index: u32) -> Result<Vec<u8>, PieceError> {
        let (offset, len) = self.range(index)?;
        if !self.have.contains(index) {
            return Err(PieceError::NotHave {
                path: self.target.path().into(),
                index,
            });
        }
        let mut buf = vec![0u8; len];
        read_exact_at(self.temp.file(), &mut buf, offset)
            .map_err(io_err("read a piece from", &self.temp.path()))?;
        Ok(buf)
    }

    /// A second handle on the file being written, for serving its pieces
    /// to peers while it is assembled; it stays valid after [`finish`]
    /// renames the file into place (same file), and after [`abort`] until
    /// dropped. Read it with positional reads only.
    ///
    /// [`finish`]: PieceWriter::finish
    /// [`abort`]: PieceWriter::abort
    pub fn share_handle(&self) -> Result<File, PieceError> {
        Ok(self
            .temp
            .file()
            .try_clone()
            .map_err(io_err("duplicate the handle of", &self.temp.path()))?)
    }

    /// The pieces we have (to announce, and to pick what is missing).
    pub fn have(&self) -> &PieceSet {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn target(&self) -> &TargetPath {
        &self.target
    }

    pub fn digest(&self) -> &FileDigest {
        &self.digest
    }

    /// Checks every piece is here, re-reads the temp file to verify the
    /// whole-file blake3 and MD5, and installs it under the final name. On
    /// any error the temp file is removed.
    pub fn finish(self) -> Result<(), PieceError> {
        if let Some(first) = self.have.missing().next() {
            return Err(PieceError::Incomplete {
                path: self.target.path().into(),
                missing: self.have.len() - self.have.count(),
                count: self.have.len(),
                first,
            });
        }
        let this = self.verify_whole()?;
        install::commit(this.temp, &this.target, this.mode, this.owner.as_ref())?;
        Ok(())
    }

    /// Drops the partial file (the temp file is removed).
    pub fn abort(self) {}

    fn range(&self, index: u32) -> Result<(u64, usize), PieceError> {
        self.digest
            .piece_range(index)
            .ok_or_else(|| PieceError::OutOfRange {
                path: self.target.path().into(),
                index,
                count: self.digest.piece_count(),
            })
    }

    /// One streaming pass over what is on disk, not over what we were sent
    /// (or the end of the in-order check, which read it back as it came).
    fn verify_whole(mut self) -> Result<Self, PieceError> {
        if self.check.is_some() {
            self.advance_check()?;
            let check = self.check.take().expect("checked above");
            let md5 = hex::encode(check.md5.finalize());
            let blake3 = Blake3Hash(*check.whole.finalize().as_bytes());
            self.compare(blake3, &md5)?;
            return Ok(self);
        }
        self.verify_by_reading()?;
        Ok(self)
    }

    fn compare(&self, blake3: Blake3Hash, md5: &str) -> Result<(), PieceError> {
        let mismatch = |what| InstallError::Mismatch {
            path: self.target.path().into(),
            what,
        };
        if blake3 != self.digest.blake3 {
            return Err(mismatch("whole-file blake3 hash").into());
        }
        if md5 != self.digest.md5 {
            return Err(mismatch("MD5").into());
        }
        Ok(())
    }

    fn verify_by_reading(&self) -> Result<(), PieceError> {
        let mut file = self.temp.file();
        let read_err = io_err("read back", &self.temp.path());
        file.rewind()
            .map_err(io_err("read back", &self.temp.path()))?;
        let on_disk =
            digest_reader(file, self.digest.size, self.digest.piece_size).map_err(read_err)?;
        self.compare(on_disk.blake3, &on_disk.md5)
    }
}

impl std::fmt::Debug for PieceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceWriter")
            .field("target", &self.target.path())
            .field("have", &self.have)
            .finish_non_exhaustive()
    }
}

// === positional I/O ===

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

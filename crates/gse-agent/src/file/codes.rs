//! The error codes a file transfer reports (FileManifest, FileProgress), and
//! the mapping from this module's errors to them.
//!
//! One place decides which code an error gets: [`Failure`] carries the code
//! and a message that names the path and says what to do, built from a
//! [`ManifestError`], an [`InstallError`] or a [`PieceError`] by their
//! `From` impls.

use std::io;

use super::account::AccountError;
use super::install::InstallError;
use super::manifest::ManifestError;
use super::target_path::TargetPathError;
use super::writer::PieceError;
use crate::safe_dir::DirError;
use crate::task::user::UserError;

/// The source's account does not exist on the source host (bk-job reads
/// it as "user does not exist", as for scripts).
pub const NO_SUCH_USER: u32 = gse_core::task::ERR_NO_SUCH_USER as u32;
/// Pieces could not be obtained from any peer nor direct.
pub const PIECES_UNOBTAINABLE: u32 = 701;
/// Received content does not match the manifest (or the manifest is corrupt).
pub const VERIFICATION: u32 = 702;
/// A target path escapes the target directory, crosses a link, or goes
/// through a directory a local user planted.
pub const PATH: u32 = 703;
/// Cannot write: missing directory without auto_mkdir, not writable, disk full.
pub const WRITE: u32 = 704;
/// The source does not exist, or nothing matched.
pub const SOURCE_NOT_FOUND: u32 = 705;
/// The source cannot be read.
pub const SOURCE_UNREADABLE: u32 = 706;
/// The source is not a directory, or the pattern is bad.
pub const SOURCE_BAD_SELECTION: u32 = 708;
/// A source file changed while it was hashed.
pub const SOURCE_CHANGED: u32 = 709;
/// Cannot install: owner, mode or the final rename.
pub const INSTALL: u32 = 710;
/// The manifest is over its size limits.
pub const MANIFEST_TOO_LARGE: u32 = 119;
/// The transfer's deadline passed.
pub const TIMEOUT: u32 = 120;

/// A transfer error as reported: code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct Failure {
    pub code: u32,
    pub message: String,
}

// === impl Failure ===

impl Failure {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ManifestError> for Failure {
    fn from(e: ManifestError) -> Self {
        let code = match &e {
            ManifestError::SourceMissing { .. } | ManifestError::NothingMatched { .. } => {
                SOURCE_NOT_FOUND
            }
            ManifestError::Read { .. }
            | ManifestError::NotUtf8 { .. }
            | ManifestError::UnsafeName { .. }
            | ManifestError::PathTooLong { .. } => SOURCE_UNREADABLE,
            ManifestError::SourceNotDir { .. }
            | ManifestError::NotAFile { .. }
            | ManifestError::NoBaseName { .. }
            | ManifestError::BadFileName { .. }
            | ManifestError::BadWildcard { .. }
            | ManifestError::BadRegex { .. } => SOURCE_BAD_SELECTION,
            ManifestError::Shrank { .. } => SOURCE_CHANGED,
            ManifestError::TooManyEntries { .. } => MANIFEST_TOO_LARGE,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<AccountError> for Failure {
    fn from(e: AccountError) -> Self {
        let code = match &e {
            AccountError::User(UserError::NoSuchUser(_)) => NO_SUCH_USER,
            _ => SOURCE_UNREADABLE,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<InstallError> for Failure {
    fn from(e: InstallError) -> Self {
        let code = match &e {
            InstallError::Path(_) => PATH,
            InstallError::Dir(dir) => dir_code(dir),
            InstallError::Mismatch { .. } => VERIFICATION,
            InstallError::MissingDir { .. } | InstallError::InTheWay { .. } => WRITE,
            InstallError::Io { op, source, .. } => io_code(op, source),
            InstallError::NoSuchOwner { .. }
            | InstallError::OwnerLookup { .. }
            | InstallError::OwnerUnsupported => INSTALL,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<PieceError> for Failure {
    fn from(e: PieceError) -> Self {
        match e {
            PieceError::Install(inner) => inner.into(),
            PieceError::BadDigest { .. }
            | PieceError::OutOfRange { .. }
            | PieceError::Corrupt { .. } => Failure::new(VERIFICATION, e.to_string()),
            PieceError::NotHave { .. } | PieceError::Incomplete { .. } => {
                Failure::new(PIECES_UNOBTAINABLE, e.to_string())
            }
        }
    }
}

impl From<TargetPathError> for Failure {
    fn from(e: TargetPathError) -> Self {
        Failure::new(PATH, e.to_string())
    }
}

/// Which code an unusable target directory gets: planted or untrusted is
/// an unsafe path, the rest cannot be written.
fn dir_code(e: &DirError) -> u32 {
    match e {
        DirError::NotAbsolute { .. }
        | DirError::Symlink { .. }
        | DirError::Untrusted { .. }
        | DirError::Writable { .. }
        | DirError::TooManyLinks { .. } => PATH,
        DirError::NotADir { .. }
        | DirError::Missing { .. }
        | DirError::Create { .. }
        | DirError::Open { .. }
        | DirError::Chown { .. } => WRITE,
    }
}

/// Which code an I/O failure during install gets: the final steps (owner,
/// mode, rename) are "install", the rest is "write".
fn io_code(op: &str, _source: &io::Error) -> u32 {
    match op {
        "rename into place" | "change the owner of" | "set the mode of" => INSTALL,
        _ => WRITE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn errors_get_their_codes() {
        let missing: Failure = ManifestError::SourceMissing { path: "/x".into() }.into();
        assert_eq!(missing.code, SOURCE_NOT_FOUND);
        let many: Failure = ManifestError::TooManyEntries {
            dir: "/x".into(),
            limit: 1,
        }
        .into();
        assert_eq!(many.code, MANIFEST_TOO_LARGE);
        let io = |op| InstallError::Io {
            op,
            path: PathBuf::from("/t/f"),
            source: io::Error::other("boom"),
        };
        assert_eq!(Failure::from(io("write")).code, WRITE);
        assert_eq!(Failure::from(io("rename into place")).code, INSTALL);
        let nobody: Failure = AccountError::User(UserError::NoSuchUser("x".into())).into();
        assert_eq!(nobody.code, NO_SUCH_USER);
        let dir: Failure = InstallError::MissingDir { dir: "/t".into() }.into();
        assert_eq!(dir.code, WRITE);
        assert!(dir.message.contains("auto_mkdir"), "{}", dir.message);
    }
}

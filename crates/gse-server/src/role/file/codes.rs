//! Status and error codes of file-transfer entries, as bk-job reads them
//! (COMPAT.md §2.1, §2.4). Agents report the 7xx codes in `FileManifest`
//! and `FileProgress`; docs/API.md has the table.

pub use gse_core::task::{ERR_AGENT_DOWN, ERR_NO_SUCH_USER, ERR_NONE, ERR_RUNNING, ERR_TERMINATED};

/// `status`: listed, nothing started yet.
pub const STATUS_WAITING: i32 = 0;
pub const STATUS_RUNNING: i32 = 1;
pub const STATUS_SUCCESS: i32 = 2;
pub const STATUS_TIMEOUT: i32 = 3;
pub const STATUS_TERMINATED: i32 = 4;
pub const STATUS_FAILED: i32 = 5;

/// The manifest is too large for one frame (Job: file size over the limit).
pub const ERR_TOO_LARGE: i32 = 119;
/// The transfer did not finish within its timeout.
pub const ERR_TIMEOUT: i32 = 120;
/// Pieces could not be had from peers nor direct; also the server's code
/// for a task that could not run at all.
pub const ERR_TRANSFER_FAILED: i32 = 701;
/// The whole-file hash did not match.
pub const ERR_VERIFY: i32 = 702;
/// A path would leave the target directory.
pub const ERR_UNSAFE_PATH: i32 = 703;
/// The target cannot be written (missing dir without auto_mkdir, not
/// writable, disk full).
pub const ERR_CANNOT_WRITE: i32 = 704;
pub const ERR_SOURCE_NOT_FOUND: i32 = 705;
pub const ERR_SOURCE_UNREADABLE: i32 = 706;
/// The target's zone is not reached from the source's (F8, F9).
pub const ERR_ZONE_REFUSED: i32 = 707;
/// Not a directory, or a bad pattern.
pub const ERR_BAD_SELECTION: i32 = 708;
pub const ERR_SOURCE_CHANGED: i32 = 709;
/// Owner unknown, or the final rename failed.
pub const ERR_INSTALL: i32 = 710;

/// Every code an entry may end with; others are reported as 701.
const KNOWN_FINAL: &[i32] = &[
    ERR_NONE,
    ERR_AGENT_DOWN,
    ERR_NO_SUCH_USER,
    ERR_TOO_LARGE,
    ERR_TIMEOUT,
    ERR_TERMINATED,
    ERR_TRANSFER_FAILED,
    ERR_VERIFY,
    ERR_UNSAFE_PATH,
    ERR_CANNOT_WRITE,
    ERR_SOURCE_NOT_FOUND,
    ERR_SOURCE_UNREADABLE,
    ERR_ZONE_REFUSED,
    ERR_BAD_SELECTION,
    ERR_SOURCE_CHANGED,
    ERR_INSTALL,
];

/// The failure code to record for what an agent reported: its own when it
/// is one of ours, else 701 (a failure must never read as 0 or 115).
pub fn failure_code(reported: u32) -> i32 {
    i32::try_from(reported)
        .ok()
        .filter(|c| *c != ERR_NONE && KNOWN_FINAL.contains(c))
        .unwrap_or(ERR_TRANSFER_FAILED)
}

/// Bounded label for `gse_file_entries_final_total{code}`.
pub fn code_label(code: i32) -> &'static str {
    match code {
        ERR_NONE => "0",
        ERR_AGENT_DOWN => "117",
        ERR_NO_SUCH_USER => "122",
        ERR_TOO_LARGE => "119",
        ERR_TIMEOUT => "120",
        ERR_TERMINATED => "126",
        ERR_TRANSFER_FAILED => "701",
        ERR_VERIFY => "702",
        ERR_UNSAFE_PATH => "703",
        ERR_CANNOT_WRITE => "704",
        ERR_SOURCE_NOT_FOUND => "705",
        ERR_SOURCE_UNREADABLE => "706",
        ERR_ZONE_REFUSED => "707",
        ERR_BAD_SELECTION => "708",
        ERR_SOURCE_CHANGED => "709",
        ERR_INSTALL => "710",
        _ => "other",
    }
}

/// The status an entry ends with for a failure code.
pub fn failure_status(code: i32) -> i32 {
    match code {
        ERR_TIMEOUT => STATUS_TIMEOUT,
        ERR_TERMINATED => STATUS_TERMINATED,
        _ => STATUS_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codes_are_kept_when_known_and_never_read_as_success() {
        assert_eq!(failure_code(705), 705);
        assert_eq!(failure_code(120), 120);
        assert_eq!(failure_code(122), 122);
        assert_eq!(failure_code(0), 701);
        assert_eq!(failure_code(115), 701);
        assert_eq!(failure_code(999), 701);
        assert_eq!(failure_code(u32::MAX), 701);
        assert_eq!(failure_status(120), STATUS_TIMEOUT);
        assert_eq!(failure_status(704), STATUS_FAILED);
        assert_eq!(code_label(12345), "other");
    }
}

//! File transfer building blocks on the agent (F1-F7): the source side's
//! manifest, and the target side's safe, verified writing.
//!
//! - [`manifest`]: [`ManifestBuilder`] expands a [`SourceSpec`] (one file,
//!   a tree, a wildcard, a regex) into a [`Manifest`] with per-piece blake3.
//! - [`target_path`]: [`target_path::resolve`] joins a manifest path onto a
//!   target directory so it cannot escape it.
//! - [`writer`]: [`PieceWriter`] assembles one file from verified pieces;
//!   [`install`] puts files, directories and links in place (temp file,
//!   fsync, owner, mode, rename) and writes small files directly (F2).
//! - [`picker`]: rarest-first choice of the next piece; [`piece_set`]: the
//!   have-bitmap.
//!
//! Everything here is synchronous and blocking (callers use
//! `spawn_blocking`). The wire protocol, the tracker, peer selection by
//! zone, speed limits and the API live elsewhere and come later.

pub mod digest;
pub mod install;
pub mod manifest;
pub mod picker;
pub mod piece_set;
pub mod target_path;
pub mod writer;

pub use digest::{Blake3Hash, FileDigest};
pub use install::{InstallError, InstallOptions, Owner};
pub use manifest::{
    EntryKind, Manifest, ManifestBuilder, ManifestEntry, ManifestError, Selection, SourceSpec,
};
pub use piece_set::PieceSet;
pub use target_path::{TargetPath, TargetPathError};
pub use writer::{PieceError, PieceWriter};

/// Files smaller than this (10 KiB) go by direct transfer (F2,
/// [`install::write_small_file`]); the rest go in pieces (F1).
pub const DIRECT_TRANSFER_LIMIT_BYTES: u64 = 10 * 1024;

//! File transfer on the agent (F1-F10, C4): source, target and relay.
//!
//! Start at [`FileService`] (agent-wide: the P2P listener, the piece store,
//! upload slots and speed caps) and [`FileRunner`] (one per link session:
//! it takes the node's file frames and sends the agent's back as
//! [`LinkOut`]s). The flows:
//! - source: [`source`] builds the [`Manifest`] ([`ManifestBuilder`]) as
//!   the task's [`account`], answers FileManifest, and serves the pieces
//!   from the [`store`];
//! - target/relay: [`download`] checks the request, installs directories,
//!   fetches small files direct through the node ([`direct`]) and large
//!   ones piece by piece from peers over the [`peer`] link (rarest first,
//!   [`picker`]), each piece verified before [`PieceWriter`] writes it,
//!   then links and modes ([`install`], paths via [`target_path`]);
//! - [`progress`] reports, [`rate`] caps speeds, [`codes`] maps errors to
//!   the API's codes, [`wire`] converts to and from file.proto.
//!
//! Disk work is blocking and runs in `spawn_blocking`. The node's side
//! (tracker, peer sets, API) lives in gse-server's `role/file`.

pub mod account;
pub mod codes;
pub use gse_core::file_digest as digest;
pub mod direct;
pub mod download;
pub mod install;
pub mod manifest;
pub mod peer;
pub mod picker;
pub mod piece_set;
pub mod progress;
pub mod rate;
pub mod runner;
pub mod service;
pub mod source;
pub mod store;
pub mod target_path;
pub mod wire;
pub mod writer;

#[cfg(all(test, unix))]
mod tests;

pub use codes::Failure;
pub use digest::{Blake3Hash, FileDigest};
pub use direct::LinkOut;
pub use install::{InstallError, InstallOptions, Owner};
pub use manifest::{
    EntryKind, Manifest, ManifestBuilder, ManifestEntry, ManifestError, Selection, SourceSpec,
};
pub use piece_set::PieceSet;
pub use runner::FileRunner;
pub use service::{FileService, FileServiceError, FileSettings};
pub use target_path::{TargetPath, TargetPathError};
pub use writer::{PieceError, PieceWriter};

/// Files smaller than this (10 KiB) go by direct transfer (F2,
/// [`install::write_small_file`]); the rest go in pieces (F1). The node
/// sets the limit per transfer (`FileStart.direct_limit`); a source uses
/// this default to decide which files it announces to peers.
pub const DIRECT_TRANSFER_LIMIT_BYTES: u64 = 10 * 1024;

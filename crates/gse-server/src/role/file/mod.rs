//! The file role (F1-F10, C4): file transfers from the API to agents, and
//! their results back.
//!
//! Start at [`FileService`]. [`FileService::start_transfer`] ([`create`])
//! lists every entry at once (unknown, offline or unreachable agents fail
//! there with 117) and asks each task's source for its manifest. Every
//! frame goes out through the node's [`Sender`], which finds where the
//! agent is held; this role never sees connections or nodes. When a manifest
//! arrives ([`manifest`]) the [`tracker`] works out who peers with whom
//! (zones, chains, pass-throughs) and every target and relay gets a
//! `FileStart`; one for an agent moving to another node follows it there
//! ([`moving`]). Agents' reports and disconnects come through
//! [`AgentFrames`] ([`frames`]); pieces fetched direct pass through this
//! node ([`relay`]). Polls and terminate are in [`query`] and [`control`].
//! Live transfers are kept in the job engine's ledger
//! ([`crate::role::jobs`]), whose writer saves them, forgets finished ones
//! and prunes old ones; [`writer`] is the file role's side of it (pacing,
//! deadlines, relays).
//! Peer-to-peer bytes never pass through here; HTTP shapes are the API
//! role's business.

pub mod codes;
pub mod config;
mod control;
mod create;
mod frames;
mod manifest;
mod metrics;
mod model;
mod moving;
mod query;
mod relay;
pub mod spec;
pub mod tracker;
mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gse_core::AgentKey;
use gse_core::seams::{StateStore, StoreError};
use parking_lot::Mutex;

pub use config::{FileConfig, PassThroughRule};

use crate::cluster::sender::{Followers, Sender};
use crate::role::jobs::{self, Ledger};
use crate::role::link::{LinkService, PeerInfo};
use model::{Effect, LiveTransfer, TransferState};

/// What the file role asks this node's link (frames go through the
/// [`Sender`]): where a connected agent serves pieces, and its zone.
pub trait FileLink: Send + Sync {
    fn peer_info(&self, key: AgentKey) -> Option<PeerInfo>;
}

impl FileLink for LinkService {
    fn peer_info(&self, key: AgentKey) -> Option<PeerInfo> {
        LinkService::peer_info(self, key)
    }
}

/// Why a file-transfer call failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "file transfer {0:?} not found: it was never started, or it is older than file.retention and was pruned"
    )]
    NotFound(String),
    /// The caller asked for a pass-through the server config does not allow.
    #[error(
        "from zone {from_zone:?} to zone {to_zone:?} is not allowed for app {app_code:?}: the operator must add a [[file.pass_through]] entry with from_zone = {from_zone:?} and to_zone = {to_zone:?} (and apps empty or listing {app_code:?}) to the server config"
    )]
    PassThroughRefused {
        index: usize,
        from_zone: String,
        to_zone: String,
        app_code: String,
    },
    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),
}

/// Why the file role could not start.
#[derive(Debug, thiserror::Error)]
pub enum FileStartError {
    #[error(
        "cannot close the file transfers left unfinished by the last run in the state store: {0}; check the store, then start again"
    )]
    Recover(StoreError),
}

/// What [`FileService::start`] needs.
pub struct FileParts {
    pub node_id: String,
    pub config: FileConfig,
    pub store: Arc<dyn StateStore>,
    /// This node's link, if it runs one (zones and P2P addresses).
    pub link: Option<Arc<dyn FileLink>>,
    /// How frames reach agents, wherever they are held.
    pub sender: Arc<Sender>,
}

/// Shared state of the file role.
pub struct FileService {
    node_id: String,
    config: FileConfig,
    store: Arc<dyn StateStore>,
    sender: Arc<Sender>,
    link: Option<Arc<dyn FileLink>>,
    /// Itself, for sends whose outcome arrives later (`Sender::post_then`).
    me: std::sync::Weak<FileService>,
    /// Transfers in memory, those with unfinished entries, and those with
    /// changes the writer has not saved yet.
    jobs: Ledger<LiveTransfer>,
    /// Direct piece requests on their way to a source.
    relay: Mutex<relay::RelayTable>,
    /// Requests waiting for their agent, moving to another node, to
    /// register again ([`moving`]).
    moving: Followers<moving::Follow>,
    seq: AtomicU64,
}

// === impl FileService ===

impl FileService {
    /// Closes what the last run left unfinished, then returns the service;
    /// spawn [`FileService::run`] to save its changes.
    pub async fn start(parts: FileParts) -> Result<Arc<Self>, FileStartError> {
        let svc = Self::new(parts);
        jobs::recover(&*svc)
            .await
            .map_err(FileStartError::Recover)?;
        Ok(svc)
    }

    fn new(parts: FileParts) -> Arc<Self> {
        Arc::new_cyclic(|me| FileService {
            sender: parts.sender,
            me: me.clone(),
            node_id: parts.node_id,
            config: parts.config,
            store: parts.store,
            link: parts.link,
            jobs: Ledger::default(),
            relay: Mutex::new(relay::RelayTable::default()),
            moving: Followers::default(),
            seq: AtomicU64::new(1),
        })
    }

    /// The `[file]` settings this service runs with.
    pub fn config(&self) -> &FileConfig {
        &self.config
    }

    /// A new transfer id, like GSE's `GSETASK:F:<time><random>:<seq>`.
    fn new_task_id(&self) -> String {
        super::gse_task_id('F', self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The transfer, if it is in memory.
    fn live(&self, task_id: &str) -> Option<Arc<LiveTransfer>> {
        self.jobs.get(task_id)
    }

    /// Makes a new transfer visible to frames, polls, disconnects and the
    /// writer.
    fn register(&self, t: &Arc<LiveTransfer>) {
        let open = t.state.lock().book.unfinished() > 0;
        self.jobs.register(t, open);
    }

    /// Runs `f` on a transfer's state, then acts on what it changed: tasks
    /// it finished are told to stop with `cancel` as the reason (`None` =
    /// the caller tells them itself).
    fn change<R>(
        &self,
        t: &Arc<LiveTransfer>,
        cancel: Option<&str>,
        f: impl FnOnce(&mut TransferState, &mut Effect) -> R,
    ) -> R {
        let mut effect = Effect::default();
        let out = f(&mut t.state.lock(), &mut effect);
        self.apply(t, effect, cancel);
        out
    }

    fn apply(&self, t: &Arc<LiveTransfer>, effect: Effect, cancel: Option<&str>) {
        let done = self.jobs.settle(t, &effect.job);
        metrics::entries_final(&effect.job.finals);
        if let Some(reason) = cancel {
            for task in &effect.tasks_done {
                self.cancel_task(t, *task, reason);
            }
        }
        if done {
            tracing::info!(task_id = %t.id, tasks = t.tasks.len(), "file transfer finished");
        }
    }

    /// Where a connected agent serves pieces, and its zone.
    fn peer_info(&self, key: AgentKey) -> Option<PeerInfo> {
        self.link.as_ref().and_then(|l| l.peer_info(key))
    }

    /// Number of transfers in memory and of those still running.
    pub fn counts(&self) -> (usize, usize) {
        self.jobs.counts()
    }
}

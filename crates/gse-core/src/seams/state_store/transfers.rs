//! File transfers ([`FileTransferRecord`]): saved whole, one record per
//! transfer, at most every few hundred milliseconds while they change.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{EntryFailure, StoreError};

/// One entry of a file transfer, as `get_transfer_file_result` reports it
/// (COMPAT.md §2.1): the upload of one task (mode 0) or one target's
/// download of it (mode 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileEntryRecord {
    /// 0 = upload (the source's side), 1 = download (one target's side).
    pub mode: u8,
    /// Index of the API's `tasks[]` this entry belongs to.
    pub task_index: u32,
    /// The source as the caller named it, and the directory and name it gave.
    pub source_agent_id: String,
    pub source_container_id: String,
    pub source_file_dir: String,
    pub source_file_name: String,
    /// The target as the caller named it (empty for uploads).
    pub dest_agent_id: String,
    pub dest_container_id: String,
    pub dest_file_dir: String,
    pub dest_file_name: String,
    /// The entry's agent (source for uploads, target for downloads) under
    /// its other names: `cloud:ip` and real agent id; empty when unknown.
    pub agent_key: String,
    pub agent_real_id: String,
    /// 0-100.
    pub progress: u32,
    /// KB/s.
    pub speed_kbps: u64,
    /// Bytes of the task's files.
    pub size: u64,
    /// 0 waiting, 1 running, 2 success, 3 timeout, 4 terminated, 5 failed.
    pub status: i32,
    pub status_info: String,
    /// 115 while running, 0 done, else why it failed (docs/API.md).
    pub error_code: i32,
    pub error_msg: String,
    /// Unix ms; 0 = not yet.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Downloads: how the bytes came (peers, or direct through the node).
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
    /// Downloads: why pieces meant for peers went direct through the node
    /// (F3), as the target reported it; empty when none did.
    pub p2p_fallback: String,
}

impl FileEntryRecord {
    /// Whether nothing more will change: any code but 115 (running) is final.
    pub fn is_final(&self) -> bool {
        self.error_code != crate::task::ERR_RUNNING
    }
}

/// A file transfer (the API's task id) with every entry's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileTransferRecord {
    pub task_id: String,
    /// The node that started the transfer and owns its live state.
    pub node_id: String,
    pub created_ms: u64,
    /// In answer order: per task, its upload, then its downloads.
    pub entries: Vec<FileEntryRecord>,
}

impl FileTransferRecord {
    /// Whether every entry is final.
    pub fn is_finished(&self) -> bool {
        self.entries.iter().all(FileEntryRecord::is_final)
    }

    /// Ends every entry that is not final with `failure` (what every store
    /// does to the transfers of a node that stopped without finishing
    /// them); returns how many it ended.
    pub fn close_unfinished(&mut self, failure: &EntryFailure) -> u64 {
        let mut closed = 0;
        for e in self.entries.iter_mut().filter(|e| !e.is_final()) {
            e.status = failure.status;
            e.error_code = failure.error_code;
            e.error_msg = failure.error_msg.clone();
            e.status_info = failure.error_msg.clone();
            e.end_ms = failure.end_ms;
            e.speed_kbps = 0;
            closed += 1;
        }
        closed
    }
}

#[async_trait]
pub trait TransferStore: Send + Sync {
    /// Saves file transfers in one transaction, each replacing what was
    /// stored under its task id. Idempotent, so a failed batch can be sent
    /// again.
    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError>;
    /// A file transfer with every entry; `None` if unknown (or pruned).
    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError>;
    /// Closes every entry of `node_id`'s transfers that is not final
    /// ([`FileEntryRecord::is_final`]) with `failure` (its message becomes
    /// both `error_msg` and `status_info`); returns how many entries.
    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError>;
    /// Deletes finished transfers created before `created_before_ms`;
    /// returns how many.
    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError>;
}

//! A live transfer in memory: what it was asked to do (fixed at the start)
//! and the state of every entry, with the bookkeeping that finishes a task
//! once its downloads are final and tells the writer what to save.
//!
//! Entries are one flat vector in answer order: per task its upload, then
//! one download per target (`upload + 1 + target`). One mutex per transfer;
//! an agent frame touches one entry, so it is held for microseconds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::AgentKey;
use gse_core::seams::state_store::{FileEntryRecord, FileTransferRecord};
use gse_proto::link::{FileProgress, Peer};
use parking_lot::Mutex;

use crate::cluster::sender::Delivery;
use crate::role::jobs::{self, Book, Job, Resident, Standing};

use super::codes::*;
use super::spec::{Selection, TargetDirSpec, ZonePair};

/// Longest `error_msg` kept from an agent, bytes.
const MAX_ERROR_MSG: usize = 4096;

/// An agent of the transfer as the caller named it, and what it resolved to.
#[derive(Clone, Debug, Default)]
pub(crate) struct AgentSlot {
    pub name: String,
    pub container: String,
    /// `None` = unknown to gse.
    pub key: Option<AgentKey>,
    pub real_id: String,
    /// Its registered zone (the link's view wins while it is connected).
    pub zone: String,
    /// Where it serves pieces, as registered (the link's view wins while
    /// it is connected here; an agent of another node has only this).
    pub p2p_addr: Option<std::net::SocketAddr>,
    /// Why it takes no part (error code, message), if so.
    pub down: Option<(i32, String)>,
}

impl AgentSlot {
    /// The key of an agent that takes part.
    pub fn usable(&self) -> Option<AgentKey> {
        self.key.filter(|_| self.down.is_none())
    }
}

/// One task as planned at the start.
pub(crate) struct TaskPlan {
    pub source: AgentSlot,
    /// `store_dir` and `file_name` as sent.
    pub source_dir: String,
    pub source_name: String,
    /// The account the source reads as (its agent's `user`; "" = the
    /// agent's default).
    pub source_user: String,
    pub selection: Selection,
    pub target: TargetDirSpec,
    pub targets: Vec<AgentSlot>,
    /// Per target: the owner to install as (`target.owner`, else the
    /// target agent's `user`).
    pub owners: Vec<String>,
    /// Flat index of the task's upload entry.
    pub upload: u32,
    /// The targets that take part, by agent: an agent named twice gets one
    /// `FileStart`, and its reports update both entries.
    pub by_key: HashMap<AgentKey, Vec<u32>>,
    /// The file's bytes when this node is the source (`async_push_file`),
    /// with its manifest entry.
    pub content: Option<Arc<PushedFile>>,
}

/// A file this node sends itself (`async_push_file`): its bytes and its
/// manifest entry, made once at the start.
pub(crate) struct PushedFile {
    pub bytes: bytes::Bytes,
    pub entry: gse_proto::link::FileEntry,
}

impl TaskPlan {
    pub fn download(&self, target: u32) -> u32 {
        self.upload + 1 + target
    }
}

/// One hop of a zone chain as planned.
pub(crate) struct HopPlan {
    pub zone: String,
    pub relays: Vec<AgentSlot>,
}

/// A transfer kept in memory while it runs and for a while after.
pub(crate) struct LiveTransfer {
    pub id: String,
    pub created_ms: u64,
    /// Shared secret peers present to each other.
    pub token: Vec<u8>,
    pub timeout: Duration,
    pub deadline: Instant,
    pub auto_mkdir: bool,
    /// Caps, bytes/s; 0 = unlimited.
    pub upload_bps: u64,
    pub download_bps: u64,
    pub tasks: Vec<TaskPlan>,
    pub hops: Vec<HopPlan>,
    pub pass_through: Vec<ZonePair>,
    /// Every usable relay agent.
    pub relay_keys: HashSet<AgentKey>,
    pub state: Mutex<TransferState>,
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the source's manifest.
    Manifest,
    /// Targets are fetching.
    Running,
    /// Every download is final.
    Done,
}

/// What the node needs of one manifest entry to check a direct piece
/// request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryShape {
    pub is_file: bool,
    pub size: u64,
    pub piece_size: u32,
}

impl EntryShape {
    pub fn pieces(&self) -> u64 {
        match (self.is_file, self.size, self.piece_size) {
            (false, _, _) | (_, 0, _) => 0,
            (true, _, 0) => 1,
            (true, size, p) => size.div_ceil(u64::from(p)),
        }
    }
}

/// The mutable part of one task.
pub(crate) struct TaskRun {
    pub phase: Phase,
    pub upload: u32,
    pub downloads: u32,
    /// Downloads not final yet.
    pub open_downloads: u32,
    /// Sum of the downloads' progress (the upload shows their mean).
    pub progress_sum: u64,
    pub manifest_ok: bool,
    pub shapes: Vec<EntryShape>,
    /// The claim of the source its manifest request was delivered to.
    pub source_conn: Option<Delivery>,
    /// The claim of each target and relay its `FileStart` was delivered to.
    pub sent_on: HashMap<AgentKey, Delivery>,
    /// Relays that were sent a `FileStart` and are still there.
    pub relays: HashSet<AgentKey>,
    /// The peer set each target and relay was given last.
    pub peers: HashMap<AgentKey, Vec<Peer>>,
    /// Agents that reported on the task (a `FileProgress`): what was sent
    /// to them reached them, so it cannot follow them to another node.
    pub heard: HashSet<AgentKey>,
    /// The task's `FileStart` bodies, kept while it runs, for an agent that
    /// was moving when its `FileStart` went out ([`super::moving`]).
    pub start: Option<Arc<StartBodies>>,
}

/// What every target (or every relay) of a task is sent alike in its
/// `FileStart`, encoded once; each agent's own part is appended to it.
pub(crate) struct StartBodies {
    pub target: bytes::Bytes,
    pub relay: bytes::Bytes,
}

/// How urgently a transfer's record must be saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Unsaved {
    #[default]
    Nothing,
    /// Only progress changed: save when the save interval allows.
    Progress,
    /// An entry became final (or the transfer is new): save next flush.
    Final,
}

/// How often a transfer's record may be saved: each save writes the whole
/// transfer, so a large one is saved less often while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pace {
    /// After an entry became final (a finished transfer is saved at once).
    pub final_every: Duration,
    /// When only progress changed.
    pub progress_every: Duration,
}

/// How an entry ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: i32,
    pub code: i32,
    pub msg: String,
}

impl Outcome {
    pub fn done() -> Self {
        Outcome {
            status: STATUS_SUCCESS,
            code: ERR_NONE,
            msg: String::new(),
        }
    }

    /// A failure; the status follows the code (120 timeout, 126 terminated).
    pub fn failed(code: i32, msg: impl Into<String>) -> Self {
        Outcome {
            status: failure_status(code),
            code,
            msg: msg.into(),
        }
    }
}

/// The mutable part of a [`LiveTransfer`].
pub(crate) struct TransferState {
    pub entries: Vec<FileEntryRecord>,
    /// Open entries, the writer's queue, finish time.
    pub book: Book,
    pub runs: Vec<TaskRun>,
    pub unsaved: Unsaved,
    pub last_saved: Option<Instant>,
}

/// What a change did, for the caller to act on after unlocking.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Effect {
    /// The ledger's part: a place in the writer's queue, the codes of the
    /// entries made final, the transfer done.
    pub job: jobs::Effect,
    /// Tasks whose last download became final: their agents are told to
    /// stop and drop what they keep for it.
    pub tasks_done: Vec<u32>,
}

// === impl TransferState ===

impl TransferState {
    /// State of a new transfer: unsaved, in the writer's queue. Entries that
    /// are final already are counted; `runs` must match the entries.
    pub fn new(entries: Vec<FileEntryRecord>, runs: Vec<TaskRun>) -> Self {
        let unfinished = entries.iter().filter(|e| !e.is_final()).count();
        TransferState {
            entries,
            book: Book::new(unfinished),
            runs,
            unsaved: Unsaved::Final,
            last_saved: None,
        }
    }

    fn touch(&mut self, level: Unsaved, effect: &mut Effect) {
        self.unsaved = self.unsaved.max(level);
        self.book.touch(&mut effect.job);
    }

    fn set_progress(&mut self, idx: usize, progress: u32) {
        let e = &mut self.entries[idx];
        let old = std::mem::replace(&mut e.progress, progress.min(100));
        if e.mode == 1 {
            let (task, new) = (e.task_index as usize, e.progress);
            let run = &mut self.runs[task];
            run.progress_sum = run.progress_sum - u64::from(old) + u64::from(new);
            let mean = run.progress_sum / u64::from(run.downloads.max(1));
            let up = run.upload as usize;
            if !self.entries[up].is_final() {
                self.entries[up].progress = mean as u32;
            }
        }
    }

    /// Ends a non-final entry; final entries never change. When it was a
    /// task's last open download, the task's upload ends too. True if the
    /// entry changed.
    pub fn close(&mut self, idx: u32, outcome: Outcome, effect: &mut Effect) -> bool {
        let i = idx as usize;
        let Some(e) = self.entries.get_mut(i) else {
            return false;
        };
        if e.is_final() {
            return false;
        }
        e.status = outcome.status;
        e.error_code = outcome.code;
        e.error_msg = bounded(outcome.msg, MAX_ERROR_MSG);
        e.status_info = match outcome.code {
            ERR_NONE if e.p2p_fallback.is_empty() => "done".to_string(),
            ERR_NONE => format!("done; {}", fallback_note(&e.p2p_fallback)),
            _ => e.error_msg.clone(),
        };
        e.end_ms = gse_core::now_ms();
        e.speed_kbps = 0;
        let (mode, task) = (e.mode, e.task_index as usize);
        if outcome.code == ERR_NONE {
            self.set_progress(i, 100);
        }
        self.book.entry_final(outcome.code, &mut effect.job);
        if mode == 1 {
            let run = &mut self.runs[task];
            run.open_downloads = run.open_downloads.saturating_sub(1);
            if run.open_downloads == 0 {
                run.phase = Phase::Done;
                run.start = None;
                effect.tasks_done.push(task as u32);
                self.settle_upload(task, effect);
            }
        }
        self.touch(Unsaved::Final, effect);
        true
    }

    /// Ends a task's upload once its downloads are all final: terminated
    /// when every download was, done when the manifest was built, else
    /// failed (nothing was ever sent).
    fn settle_upload(&mut self, task: usize, effect: &mut Effect) {
        let run = &self.runs[task];
        let up = run.upload;
        if self.entries[up as usize].is_final() {
            return;
        }
        let first = up as usize + 1;
        let downloads = &self.entries[first..first + run.downloads as usize];
        let outcome = if downloads.iter().all(|d| d.error_code == ERR_TERMINATED) {
            Outcome::failed(ERR_TERMINATED, "terminated")
        } else if run.manifest_ok {
            Outcome::done()
        } else {
            Outcome::failed(
                ERR_TRANSFER_FAILED,
                "nothing was sent: every target of this task ended before the source's manifest arrived",
            )
        };
        self.close(up, outcome, effect);
    }

    /// A non-final entry's new state line; its status stays.
    pub fn set_info(&mut self, idx: u32, info: String, effect: &mut Effect) {
        match self.entries.get_mut(idx as usize) {
            Some(e) if !e.is_final() => e.status_info = info,
            _ => return,
        }
        self.touch(Unsaved::Progress, effect);
    }

    /// A running entry's new state line; marks it running.
    pub fn set_running(&mut self, idx: u32, info: String, effect: &mut Effect) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if e.is_final() {
            return;
        }
        if e.status == STATUS_WAITING {
            e.status = STATUS_RUNNING;
            e.start_ms = gse_core::now_ms();
        }
        e.status_info = info;
        self.touch(Unsaved::Progress, effect);
    }

    /// Applies a target's `FileProgress` (its numbers; the state is the
    /// caller's business) to one of its download entries.
    pub fn download_progress(&mut self, idx: u32, p: &FileProgress, effect: &mut Effect) {
        let i = idx as usize;
        if self.entries.get(i).is_none_or(FileEntryRecord::is_final) {
            return;
        }
        let progress = match p.total_bytes {
            0 => 0,
            total => (u128::from(p.done_bytes) * 100 / u128::from(total)).min(100) as u32,
        };
        self.set_progress(i, progress);
        let e = &mut self.entries[i];
        e.speed_kbps = p.bytes_per_s / 1024;
        e.bytes_p2p = p.bytes_p2p;
        e.bytes_direct = p.bytes_direct;
        if !p.fallback_reason.is_empty() {
            e.p2p_fallback = bounded(p.fallback_reason.clone(), MAX_ERROR_MSG);
        }
        let mut info = format!(
            "downloading: {} of {} bytes, {} of {} files",
            p.done_bytes, p.total_bytes, p.files_done, p.files_total
        );
        if !e.p2p_fallback.is_empty() {
            info = format!("{info}; {}", fallback_note(&e.p2p_fallback));
        }
        self.set_running(idx, info, effect);
    }

    /// The upload's speed from the source's `FileProgress`.
    pub fn upload_speed(&mut self, idx: u32, bytes_per_s: u64, effect: &mut Effect) {
        let Some(e) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if e.is_final() {
            return;
        }
        e.speed_kbps = bytes_per_s / 1024;
        self.touch(Unsaved::Progress, effect);
    }

    /// Sets the size of a task's entries (bytes of its manifest's files).
    pub fn set_size(&mut self, task: usize, size: u64, effect: &mut Effect) {
        let run = &self.runs[task];
        let first = run.upload as usize;
        for e in &mut self.entries[first..=first + run.downloads as usize] {
            e.size = size;
        }
        self.touch(Unsaved::Progress, effect);
    }

    /// Moves the record out for saving when it is due (see [`Pace`]), or
    /// at once with `force`. Leaves the writer's queue when it returns a
    /// record or has nothing to save (a save not due yet stays queued).
    pub fn take_record(
        &mut self,
        t: &LiveTransfer,
        node_id: &str,
        now: Instant,
        pace: Pace,
        force: bool,
    ) -> Option<FileTransferRecord> {
        let wait = match self.unsaved {
            Unsaved::Nothing => {
                self.book.leave_queue();
                return None;
            }
            Unsaved::Final if self.book.unfinished() == 0 => Duration::ZERO,
            Unsaved::Final => pace.final_every,
            Unsaved::Progress => pace.progress_every,
        };
        let due = force
            || self
                .last_saved
                .is_none_or(|at| now.duration_since(at) >= wait);
        if !due {
            return None;
        }
        self.unsaved = Unsaved::Nothing;
        self.book.leave_queue();
        self.last_saved = Some(now);
        Some(FileTransferRecord {
            task_id: t.id.clone(),
            node_id: node_id.to_string(),
            created_ms: t.created_ms,
            entries: self.entries.clone(),
        })
    }

    /// Undoes a [`TransferState::take_record`] whose batch the store refused.
    pub fn unsave(&mut self, effect: &mut Effect) {
        self.last_saved = None;
        self.touch(Unsaved::Final, effect);
    }
}

// === impl LiveTransfer ===

impl Job for LiveTransfer {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Resident for LiveTransfer {
    fn standing(&self) -> Standing {
        let st = self.state.lock();
        Standing {
            finished_at: st.book.finished_at(),
            unsaved: st.book.queued(),
            entries: st.entries.len(),
            // What it holds besides its entries: pushed files' bytes.
            bytes: self
                .tasks
                .iter()
                .filter_map(|t| t.content.as_ref())
                .map(|f| f.bytes.len())
                .sum(),
        }
    }
}

/// How a download's `status_info` mentions its fallback to direct.
fn fallback_note(reason: &str) -> String {
    format!("P2P fell back to direct through the server: {reason}")
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

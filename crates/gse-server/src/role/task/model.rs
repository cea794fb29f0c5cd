//! A live task in memory: its targets (fixed at creation) and the state of
//! every (target, atomic task) entry, with the bookkeeping the writer needs
//! (which entries changed, how much of each log is saved).
//!
//! Entries are one flat vector, `target * atomic_count + atomic_id`, behind
//! one mutex per task: an agent frame touches one entry, so a task's lock is
//! held for microseconds and different tasks never contend.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gse_core::AgentKey;
use gse_core::seams::state_store::{
    TaskEntryState, TaskLogChunk, TaskRecord, TaskTarget, TaskWrites,
};
use gse_core::task::{STATUS_FAILED, is_final};
use parking_lot::Mutex;

use crate::cluster::sender::Delivery;
pub(crate) use crate::role::jobs::Effect;
use crate::role::jobs::{Book, Job, Resident, Standing};

/// Longest `error_msg` kept from an agent, bytes.
const MAX_ERROR_MSG: usize = 4096;
/// Room over `output_limit` for the agent's own truncation marker.
const MARKER_SLACK: usize = 1024;

/// One (target, atomic task) entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Entry {
    pub status: i32,
    pub error_code: i32,
    pub error_msg: String,
    pub exit_code: i32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub log: String,
    /// Bytes of `log` already handed to the writer.
    saved_log: usize,
    /// Queued in `TaskState::dirty`.
    dirty: bool,
    /// The server cut the log (the agent sent more than the limit).
    cut: bool,
}

impl Entry {
    pub fn new(status: i32, error_code: i32, error_msg: String) -> Self {
        Entry {
            status,
            error_code,
            error_msg,
            ..Entry::default()
        }
    }

    /// An entry that failed before it started.
    pub fn failed(error_code: i32, error_msg: String, end_ms: u64) -> Self {
        Entry {
            end_ms,
            ..Entry::new(STATUS_FAILED, error_code, error_msg)
        }
    }

    pub fn is_final(&self) -> bool {
        is_final(self.status, self.error_code)
    }
}

/// An update of an entry's state (from an agent, or decided by the server).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Update {
    pub status: i32,
    pub error_code: i32,
    pub error_msg: String,
    pub exit_code: i32,
    /// 0 = keep what is known.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A task kept in memory while it runs and for a while after.
pub(crate) struct LiveTask {
    pub id: String,
    pub tag: String,
    pub created_ms: u64,
    pub atomic_count: u32,
    pub targets: Vec<TaskTarget>,
    /// The target each dispatched agent runs as (an agent is run once).
    pub by_agent: HashMap<AgentKey, u32>,
    /// Each atomic task's timeout, seconds (defaults resolved).
    pub atomic_timeouts: Vec<u32>,
    /// After this, a target none of whose atomic tasks has started yet is
    /// closed. Generous: agents run a bounded number of tasks at once and
    /// queue the rest, so a task may wait long before it starts.
    pub queued_deadline: Instant,
    pub index: TargetIndex,
    /// Each target's `RunScript` body (shared, one per distinct user),
    /// kept while the task runs so that a target whose agent was moving
    /// when it was sent can be sent it once the agent registered on its
    /// new node; emptied when the task finishes (a script may be large).
    pub bodies: Mutex<Vec<bytes::Bytes>>,
    pub state: Mutex<TaskState>,
}

/// The mutable part of a [`LiveTask`].
pub(crate) struct TaskState {
    pub entries: Vec<Entry>,
    /// Open entries, the writer's queue, finish time.
    pub book: Book,
    /// Indices of entries changed since the writer last looked.
    dirty: Vec<u32>,
    /// The task's record is not saved yet.
    record_unsaved: bool,
    /// Deadline of each target whose agent reported an atomic task
    /// running: now + the timeouts of what it has left + a grace.
    pub run_deadlines: HashMap<u32, Instant>,
    /// No target's deadline is before this (rechecked when reached).
    pub next_check: Instant,
    /// The claim of its agent each target's task was delivered to: only
    /// that claim ending closes the target (the agent may already run it
    /// under a newer one). Recorded before the frame is sent.
    pub sent_on: HashMap<u32, Delivery>,
    /// Bytes of all entries' logs held in memory.
    pub log_bytes: usize,
    output_cap: usize,
}

// === impl TaskState ===

impl TaskState {
    /// State of a new task: every entry dirty, the record unsaved.
    pub fn new(entries: Vec<Entry>, output_limit: u64, first_check: Instant) -> Self {
        let unfinished = entries.iter().filter(|e| !e.is_final()).count();
        let mut state = TaskState {
            dirty: Vec::with_capacity(entries.len()),
            entries,
            book: Book::new(unfinished),
            record_unsaved: true,
            run_deadlines: HashMap::new(),
            next_check: first_check,
            sent_on: HashMap::new(),
            log_bytes: 0,
            output_cap: (output_limit as usize).saturating_add(MARKER_SLACK),
        };
        for i in 0..state.entries.len() {
            state.mark(i as u32);
        }
        state
    }

    fn mark(&mut self, idx: u32) {
        let entry = &mut self.entries[idx as usize];
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(idx);
        }
    }

    fn touched(&mut self, idx: u32, effect: &mut Effect) {
        self.mark(idx);
        self.book.touch(effect);
    }

    /// Applies `update` to a non-final entry; final entries never change.
    pub fn update(&mut self, idx: u32, update: Update, effect: &mut Effect) {
        let Some(entry) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if entry.is_final() {
            return;
        }
        entry.status = update.status;
        entry.error_code = update.error_code;
        entry.error_msg = bounded(update.error_msg, MAX_ERROR_MSG);
        entry.exit_code = update.exit_code;
        if update.start_ms != 0 {
            entry.start_ms = update.start_ms;
        }
        if update.end_ms != 0 {
            entry.end_ms = update.end_ms;
        }
        if entry.is_final() {
            if entry.end_ms == 0 {
                entry.end_ms = gse_core::now_ms();
            }
            self.book.entry_final(entry.status, effect);
        }
        self.touched(idx, effect);
    }

    /// Sets a started target's deadline (later or earlier than before).
    pub fn set_run_deadline(&mut self, target: u32, deadline: Instant) {
        self.run_deadlines.insert(target, deadline);
        self.next_check = self.next_check.min(deadline);
    }

    /// Appends output to a non-final entry, up to the output cap.
    pub fn append(&mut self, idx: u32, data: &str, effect: &mut Effect) {
        let cap = self.output_cap;
        let Some(entry) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if entry.is_final() || entry.cut || data.is_empty() {
            return;
        }
        let room = cap.saturating_sub(entry.log.len());
        let before = entry.log.len();
        if data.len() <= room {
            entry.log.push_str(data);
        } else {
            entry.log.push_str(&data[..floor_char_boundary(data, room)]);
            entry
                .log
                .push_str("\n[gse-server: output over the limit was dropped]\n");
            entry.cut = true;
        }
        self.log_bytes += entry.log.len() - before;
        self.touched(idx, effect);
    }

    /// Moves what changed into `out`; the task leaves the writer's queue.
    /// True if it had anything to save.
    pub fn drain_into(&mut self, task: &LiveTask, node_id: &str, out: &mut TaskWrites) -> bool {
        self.book.leave_queue();
        let changed = self.record_unsaved || !self.dirty.is_empty();
        if std::mem::take(&mut self.record_unsaved) {
            out.tasks.push(task.record(node_id));
        }
        let n = task.atomic_count.max(1);
        for idx in std::mem::take(&mut self.dirty) {
            let entry = &mut self.entries[idx as usize];
            entry.dirty = false;
            let (target, atomic_id) = (idx / n, idx % n);
            out.entries.push(TaskEntryState {
                task_id: task.id.clone(),
                target,
                atomic_id,
                status: entry.status,
                error_code: entry.error_code,
                error_msg: entry.error_msg.clone(),
                exit_code: entry.exit_code,
                start_ms: entry.start_ms,
                end_ms: entry.end_ms,
            });
            if entry.log.len() > entry.saved_log {
                out.logs.push(TaskLogChunk {
                    task_id: task.id.clone(),
                    target,
                    atomic_id,
                    offset: entry.saved_log as u64,
                    data: entry.log[entry.saved_log..].to_string(),
                });
                entry.saved_log = entry.log.len();
            }
        }
        changed
    }

    /// Undoes part of a [`TaskState::drain_into`] whose batch the store
    /// refused: the record is unsaved again.
    pub fn unsave_record(&mut self, effect: &mut Effect) {
        self.record_unsaved = true;
        self.book.touch(effect);
    }

    /// Undoes part of a refused drain: the entry is dirty again and, when
    /// `log_from` is given, its log is unsaved from that byte on (logs only
    /// grow, so the offset is still valid).
    pub fn unsave_entry(&mut self, idx: u32, log_from: Option<u64>, effect: &mut Effect) {
        let Some(entry) = self.entries.get_mut(idx as usize) else {
            return;
        };
        if let Some(from) = log_from {
            entry.saved_log = entry.saved_log.min(from as usize);
        }
        self.touched(idx, effect);
    }
}

// === impl LiveTask ===

impl Job for LiveTask {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Resident for LiveTask {
    fn standing(&self) -> Standing {
        let state = self.state.lock();
        Standing {
            finished_at: state.book.finished_at(),
            unsaved: state.book.queued(),
            entries: state.entries.len(),
            bytes: state.log_bytes,
        }
    }
}

impl LiveTask {
    /// The flat index of (target, atomic_id), if both exist.
    pub fn entry_index(&self, target: u32, atomic_id: u32) -> Option<u32> {
        let n = self.atomic_count;
        ((target as usize) < self.targets.len() && atomic_id < n).then(|| target * n + atomic_id)
    }

    /// Deadline of a target whose agent just started `atomic_id`: `now`
    /// plus the timeouts of that atomic task and the ones after it, plus
    /// `grace`.
    pub fn run_deadline(&self, atomic_id: u32, now: Instant, grace: Duration) -> Instant {
        let left: u64 = self
            .atomic_timeouts
            .iter()
            .skip(atomic_id as usize)
            .map(|&t| u64::from(t))
            .sum();
        now + Duration::from_secs(left) + grace
    }

    /// Whether every entry of `target` is still as it was sent (dispatched,
    /// not started): the agent has not taken it up.
    pub fn target_untouched(&self, state: &TaskState, target: u32) -> bool {
        (0..self.atomic_count).all(|a| {
            self.entry_index(target, a).is_some_and(|i| {
                let e = &state.entries[i as usize];
                e.status == gse_core::task::STATUS_DISPATCHED && e.start_ms == 0
            })
        })
    }

    /// Whether any entry of `target` is not final yet.
    pub fn target_unfinished(&self, state: &TaskState, target: u32) -> bool {
        (0..self.atomic_count).any(|a| {
            self.entry_index(target, a)
                .is_some_and(|i| !state.entries[i as usize].is_final())
        })
    }

    /// The task's record for the store.
    pub fn record(&self, node_id: &str) -> TaskRecord {
        TaskRecord {
            task_id: self.id.clone(),
            node_id: node_id.to_string(),
            created_ms: self.created_ms,
            tag: self.tag.clone(),
            atomic_count: self.atomic_count,
            targets: self.targets.clone(),
        }
    }
}

/// Finds targets by the names a caller may use for them: the `bk_agent_id`
/// it sent, the agent's `cloud:ip`, or its real agent id.
#[derive(Debug, Default)]
pub(crate) struct TargetIndex {
    by_name: HashMap<String, Vec<u32>>,
}

impl TargetIndex {
    pub fn new(targets: &[TaskTarget]) -> Self {
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            for name in [&t.bk_agent_id, &t.agent_key, &t.agent_id] {
                if name.is_empty() {
                    continue;
                }
                let list = by_name.entry(name.clone()).or_default();
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        TargetIndex { by_name }
    }

    /// The target `bk_agent_id` (in a container or not) names: the one the
    /// caller named that way first, else one that resolved to that agent.
    pub fn find(&self, targets: &[TaskTarget], bk_agent_id: &str, container: &str) -> Option<u32> {
        let lookup = |name: &str| -> Option<u32> {
            let list = self.by_name.get(name)?;
            let same_container = |&&i: &&u32| targets[i as usize].bk_container_id == container;
            list.iter()
                .filter(same_container)
                .find(|&&i| targets[i as usize].bk_agent_id == name)
                .or_else(|| list.iter().find(same_container))
                .copied()
        };
        lookup(bk_agent_id).or_else(|| {
            let normal = gse_core::AgentRef::parse(bk_agent_id).ok()?.to_string();
            (normal != bk_agent_id).then(|| lookup(&normal)).flatten()
        })
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        s.truncate(floor_char_boundary(&s, max));
    }
    s
}

/// The largest char boundary of `s` at or below `i`.
pub(crate) fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    (0..=i).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

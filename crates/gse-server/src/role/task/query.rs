//! Polls (`get_execute_script_result`): entries' states and log slices,
//! from memory for live and recent tasks, from the store for older ones.
//!
//! `screen` is the log from byte `offset`, at most `limit` bytes, cut back
//! to a character boundary so that it is valid UTF-8 and its byte length is
//! exactly what the caller adds to its offset (bk-job does; COMPAT.md §2.1).
//! An `offset` inside a character (a caller that lost count) returns the
//! stray bytes of that character as one `?` each, for the same reason.
//!
//! An entry asked for twice in one poll is answered once, as first asked.
//!
//! One answer holds at most [`MAX_ANSWER_SCREEN_BYTES`] of screens (or the
//! smaller budget the API passes): entries
//! past that budget get their screen cut the same way (possibly to `""`), so
//! the caller's offset accounting still holds and it reads the rest with the
//! next poll.

use std::collections::{HashMap, HashSet};

use gse_core::seams::state_store::{LogWindow, StoredTask, TaskTarget};

use super::model::{LiveTask, TargetIndex};
use super::spec::{MAX_SCREEN_BYTES, ResultQuery};
use super::{TaskError, TaskService};

/// Most bytes of `screen` one poll's answer holds, all entries together.
pub const MAX_ANSWER_SCREEN_BYTES: usize = 64 << 20;
/// Log windows read from the store per call, so that a poll of every entry
/// reads about what the answer can hold.
const WINDOWS_PER_READ: usize = 32;

/// One entry of a poll's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryView {
    /// As the caller named the agent in this poll.
    pub bk_agent_id: String,
    pub bk_container_id: String,
    pub atomic_task_id: u32,
    pub status: i32,
    pub error_code: i32,
    pub error_msg: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub exit_code: i32,
    pub tag: String,
    pub screen: String,
}

/// One entry a poll asks for.
struct Pick {
    target: u32,
    atomic_id: u32,
    name: String,
    offset: u64,
    limit: u64,
}

impl TaskService {
    /// The entries `query` asks for, in its order (every entry when it
    /// names none); agents or atomic tasks not in the task are left out.
    pub async fn results(
        &self,
        task_id: &str,
        query: &ResultQuery,
    ) -> Result<Vec<EntryView>, TaskError> {
        self.results_within(task_id, query, MAX_ANSWER_SCREEN_BYTES)
            .await
    }

    /// [`TaskService::results`] with at most `budget` bytes of screens
    /// (the API derives it from its answer size cap).
    pub async fn results_within(
        &self,
        task_id: &str,
        query: &ResultQuery,
        budget: usize,
    ) -> Result<Vec<EntryView>, TaskError> {
        if let Some(task) = self.live(task_id) {
            return Ok(results_live(&task, query, budget));
        }
        match self.store.get_task(task_id).await? {
            Some(stored) => self.results_stored(stored, query, budget).await,
            None => Err(TaskError::NotFound(task_id.to_string())),
        }
    }

    async fn results_stored(
        &self,
        stored: StoredTask,
        query: &ResultQuery,
        mut budget: usize,
    ) -> Result<Vec<EntryView>, TaskError> {
        let record = &stored.record;
        let index = TargetIndex::new(&record.targets);
        let picks = pick(&record.targets, &index, record.atomic_count, query);
        let mut logs = Vec::with_capacity(picks.len());
        for chunk in picks.chunks(WINDOWS_PER_READ) {
            let windows: Vec<LogWindow> = chunk
                .iter()
                .map(|p| LogWindow {
                    target: p.target,
                    atomic_id: p.atomic_id,
                    offset: p.offset,
                    // One byte more, to see whether `limit` cuts a character.
                    max_bytes: p.limit.min(budget as u64) + 1,
                })
                .collect();
            for (p, log) in chunk
                .iter()
                .zip(self.store.read_task_logs(&record.task_id, &windows).await?)
            {
                let s = screen(&log, (p.limit as usize).min(budget));
                budget = budget.saturating_sub(s.len());
                logs.push(s);
            }
        }
        let states: HashMap<(u32, u32), _> = stored
            .entries
            .iter()
            .map(|e| ((e.target, e.atomic_id), e))
            .collect();
        let mut out = Vec::with_capacity(picks.len());
        for (p, log) in picks.into_iter().zip(logs) {
            let Some(e) = states.get(&(p.target, p.atomic_id)) else {
                continue;
            };
            out.push(EntryView {
                bk_container_id: record.targets[p.target as usize].bk_container_id.clone(),
                atomic_task_id: p.atomic_id,
                status: e.status,
                error_code: e.error_code,
                error_msg: e.error_msg.clone(),
                start_ms: e.start_ms,
                end_ms: e.end_ms,
                exit_code: e.exit_code,
                tag: record.tag.clone(),
                screen: log,
                bk_agent_id: p.name,
            });
        }
        Ok(out)
    }
}

/// The entries of a task in memory. The task's lock is taken per entry, so
/// agents' frames are not held up for a whole poll.
fn results_live(task: &LiveTask, query: &ResultQuery, mut budget: usize) -> Vec<EntryView> {
    let picks = pick(&task.targets, &task.index, task.atomic_count, query);
    let mut out = Vec::with_capacity(picks.len());
    for p in picks {
        let Some(idx) = task.entry_index(p.target, p.atomic_id) else {
            continue;
        };
        let state = task.state.lock();
        let e = &state.entries[idx as usize];
        let log = e.log.as_bytes();
        let from = (p.offset.min(log.len() as u64)) as usize;
        let screen = screen(&log[from..], (p.limit as usize).min(budget));
        budget = budget.saturating_sub(screen.len());
        out.push(EntryView {
            bk_container_id: task.targets[p.target as usize].bk_container_id.clone(),
            atomic_task_id: p.atomic_id,
            status: e.status,
            error_code: e.error_code,
            error_msg: e.error_msg.clone(),
            start_ms: e.start_ms,
            end_ms: e.end_ms,
            exit_code: e.exit_code,
            tag: task.tag.clone(),
            screen,
            bk_agent_id: p.name,
        });
    }
    out
}

/// The entries a query names, resolved to (target, atomic task).
fn pick(
    targets: &[TaskTarget],
    index: &TargetIndex,
    atomic_count: u32,
    query: &ResultQuery,
) -> Vec<Pick> {
    let every_atomic = |target: u32, name: &str| {
        let name = name.to_string();
        (0..atomic_count).map(move |atomic_id| Pick {
            target,
            atomic_id,
            name: name.clone(),
            offset: 0,
            limit: MAX_SCREEN_BYTES,
        })
    };
    let Some(agents) = query.agents.as_ref().filter(|a| !a.is_empty()) else {
        return targets
            .iter()
            .enumerate()
            .flat_map(|(i, t)| every_atomic(i as u32, &t.bk_agent_id))
            .collect();
    };
    let mut picks = Vec::new();
    // An entry named again (the same agent listed twice, or under both its
    // names) is answered once, as first asked.
    let mut seen = HashSet::new();
    for q in agents {
        let name = &q.target.bk_agent_id;
        let Some(target) = index.find(targets, name, &q.target.bk_container_id) else {
            continue;
        };
        if q.atomic_tasks.is_empty() {
            picks.extend(every_atomic(target, name).filter(|p| seen.insert((target, p.atomic_id))));
            continue;
        }
        let asked = q.atomic_tasks.iter().filter(|a| a.atomic_id < atomic_count);
        for a in asked.filter(|a| seen.insert((target, a.atomic_id))) {
            picks.push(Pick {
                target,
                atomic_id: a.atomic_id,
                name: name.clone(),
                offset: a.offset,
                limit: a
                    .limit
                    .filter(|&l| l > 0)
                    .map_or(MAX_SCREEN_BYTES, |l| l.min(MAX_SCREEN_BYTES)),
            });
        }
    }
    picks
}

/// At most `limit` bytes of `window` (a log from the caller's offset) as
/// valid UTF-8 whose byte length is exactly the bytes consumed. `window`
/// must hold at least `limit + 1` bytes when the log goes on past the limit.
pub(super) fn screen(window: &[u8], limit: usize) -> String {
    let continuation = |b: u8| b & 0xC0 == 0x80;
    let stray = window
        .iter()
        .take(3)
        .take_while(|&&b| continuation(b))
        .count()
        .min(limit);
    let mut end = window.len().min(limit);
    while end > stray && end < window.len() && continuation(window[end]) {
        end -= 1;
    }
    let mut out = "?".repeat(stray);
    out.push_str(&String::from_utf8_lossy(&window[stray..end]));
    out
}

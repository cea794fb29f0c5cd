//! Real-time task execution on this host (T2-T8): `RunScript` in,
//! `TaskStatus` and `TaskOutput` out.
//!
//! Start at [`TaskRunner`], one per link session: [`TaskRunner::handle`]
//! takes the server's `RunScript` and `CancelTask` frames; each task runs in
//! its own tokio task through [`runner::run`] (danger check, user, scripts,
//! atomic tasks in turn), at most [`MAX_RUNNING_TASKS`] at once, the rest
//! queued. Frames go back through the link's outbound queue; each task's
//! frames keep their order (see [`report`]). When the session ends,
//! [`TaskRunner::cancel_all`] kills every task's process tree: the server
//! fails a lost agent's unfinished tasks with 117, so nothing may keep
//! running unreported. Running one process is the `Executor`'s job
//! (`crate::executor`), not this module's.

pub mod policy;
pub mod report;
pub mod runner;
pub mod scripts;
#[cfg(all(test, unix))]
mod tests;
pub mod user;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gse_core::danger::DangerPolicy;
use gse_core::seams::Executor;
use gse_proto::link::{CancelTask, RunScript};
use gse_proto::{Frame, MsgType};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use report::Reporter;
use runner::TaskContext;

/// Tasks whose processes may run at once; later ones wait their turn.
pub const MAX_RUNNING_TASKS: usize = 100;
/// How long [`TaskRunner::cancel_all`] waits for killed tasks to end.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Task ids of live tasks and how to cancel each.
type Live = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// Runs the tasks of one link session.
pub struct TaskRunner {
    executor: Arc<dyn Executor>,
    policy: Arc<DangerPolicy>,
    out: mpsc::Sender<Frame>,
    live: Live,
    slots: Arc<Semaphore>,
    /// Parent of every task's token: cancelling it stops them all.
    all: CancellationToken,
    tracker: TaskTracker,
}

impl TaskRunner {
    /// A runner sending its frames to `out` (the link's outbound queue).
    pub fn new(
        executor: Arc<dyn Executor>,
        policy: DangerPolicy,
        out: mpsc::Sender<Frame>,
    ) -> Self {
        TaskRunner {
            executor,
            policy: Arc::new(policy),
            out,
            live: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_RUNNING_TASKS)),
            all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Takes a task frame from the server; `false` if `frame` is not one.
    pub fn handle(&self, frame: &Frame) -> bool {
        match frame.msg_type {
            MsgType::RunScript => match frame.decode::<RunScript>() {
                Ok(req) => self.start(frame.stream_id, req),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a RunScript frame that does not decode")
                }
            },
            MsgType::CancelTask => match frame.decode::<CancelTask>() {
                Ok(c) => self.cancel(&c.task_id),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a CancelTask frame that does not decode")
                }
            },
            _ => return false,
        }
        true
    }

    /// Starts `req` in its own tokio task; its frames carry `stream_id`.
    pub fn start(&self, stream_id: u64, req: RunScript) {
        let Some(registered) = self.register(&req.task_id) else {
            return;
        };
        tracing::info!(task_id = %req.task_id, atomic_tasks = req.atomic_tasks.len(), user = %req.user, "task received");
        let ctx = TaskContext {
            executor: self.executor.clone(),
            policy: self.policy.clone(),
            reporter: Reporter::new(self.out.clone(), stream_id, req.task_id.clone()),
            cancel: registered.cancel.clone(),
        };
        let slots = self.slots.clone();
        let span = tracing::info_span!("task", task_id = %req.task_id);
        self.tracker.spawn(
            async move {
                let _registered = registered;
                let _slot = tokio::select! {
                    slot = slots.acquire_owned() => slot,
                    _ = ctx.cancel.cancelled() => {
                        return runner::terminate_all(&ctx.reporter, &req.atomic_tasks).await;
                    }
                };
                runner::run(ctx, req).await;
                tracing::info!("task finished");
            }
            .instrument(span),
        );
    }

    /// Kills the process tree of task `task_id`, if it runs here.
    pub fn cancel(&self, task_id: &str) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(task_id) {
            Some(token) => {
                tracing::info!(task_id = %task_id, "cancelling task");
                token.cancel();
            }
            None => {
                tracing::debug!(task_id = %task_id, "CancelTask for a task not running here; ignored")
            }
        }
    }

    /// Tasks received and not finished (running or queued).
    pub fn live(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Cancels every task and waits (bounded) until their processes are
    /// gone. The outbound queue's receiver must be dropped or drained
    /// meanwhile, or tasks may block sending their last frames.
    pub async fn cancel_all(&self) {
        let live = self.live();
        if live > 0 {
            tracing::warn!(
                tasks = live,
                "cancelling every task: the link to the server ended"
            );
        }
        self.all.cancel();
        self.tracker.close();
        if tokio::time::timeout(CANCEL_WAIT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(wait = ?CANCEL_WAIT, "some tasks did not end after being cancelled");
        }
    }

    /// Waits until every task started so far has ended.
    pub async fn wait_idle(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.tracker.reopen();
    }

    /// Records `task_id` as live, unless it is empty or already live.
    fn register(&self, task_id: &str) -> Option<Registered> {
        if task_id.is_empty() {
            tracing::warn!("ignoring a RunScript without a task id");
            return None;
        }
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.contains_key(task_id) {
            tracing::warn!(task_id = %task_id, "task is already running here; ignoring the duplicate RunScript");
            return None;
        }
        let cancel = self.all.child_token();
        live.insert(task_id.to_owned(), cancel.clone());
        Some(Registered {
            live: self.live.clone(),
            task_id: task_id.to_owned(),
            cancel,
        })
    }
}

impl Drop for TaskRunner {
    /// A runner dropped without `cancel_all` still stops its tasks.
    fn drop(&mut self) {
        self.all.cancel();
    }
}

// === Registered ===

/// A live task's entry; removed when the task's tokio task ends (or panics).
struct Registered {
    live: Live,
    task_id: String,
    cancel: CancellationToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.remove(&self.task_id);
    }
}

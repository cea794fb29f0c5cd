//! One task, start to end: check -> user -> scripts -> atomic tasks in turn.
//!
//! [`run`] is the whole flow of a `RunScript` on this host. Anything that
//! stops the task before the first process (a blocking danger rule, an
//! unknown user, a script that cannot be written) fails every atomic task
//! with its own error code and runs nothing. Atomic tasks then run serially
//! in the order given; once one does not succeed, the later ones are
//! reported as discarded without running.

use std::sync::Arc;
use std::time::Duration;

use gse_core::danger::{DangerPolicy, Verdict};
use gse_core::now_ms;
use gse_core::seams::executor::RunAs;
use gse_core::seams::{ExecOutcome, ExecRequest, Executor, ExitKind};
use gse_core::task::*;
use gse_proto::link::{AtomicTask, RunScript, ScriptFile, TaskStatus};
use tokio_util::sync::CancellationToken;

use super::report::{Reporter, forward_output};
use super::{scripts, user};

/// Timeout used when an atomic task says 0: bk-job's longest step timeout.
pub const DEFAULT_TIMEOUT_SECS: u32 = 86_400;
/// Executor output chunks buffered between the pipes and the batcher.
const OUTPUT_CHUNKS: usize = 16;

/// What a task needs besides its request.
pub struct TaskContext {
    pub executor: Arc<dyn Executor>,
    pub policy: Arc<DangerPolicy>,
    pub reporter: Reporter,
    /// Fires on CancelTask or when the link is lost.
    pub cancel: CancellationToken,
}

/// A reason to fail every atomic task before anything runs.
struct Refusal {
    code: i32,
    message: String,
}

/// Why later atomic tasks are not run.
#[derive(Clone, Copy)]
enum Stop {
    /// This atomic task did not succeed.
    Failed(u32),
    Terminated,
}

/// Runs `req` to the end, reporting every atomic task's final status.
pub async fn run(ctx: TaskContext, req: RunScript) {
    let run_as = match prepare(&ctx, &req).await {
        Ok(run_as) => run_as,
        Err(refusal) => {
            tracing::warn!(task_id = %req.task_id, error_code = refusal.code, "task refused: {}", refusal.message);
            return fail_all(&ctx.reporter, &req.atomic_tasks, &refusal).await;
        }
    };
    let mut stop: Option<Stop> = None;
    for atomic in &req.atomic_tasks {
        if ctx.cancel.is_cancelled() {
            stop = Some(Stop::Terminated);
        }
        if let Some(why) = stop {
            ctx.reporter.status(not_run(atomic.atomic_id, why)).await;
            continue;
        }
        let exit = run_atomic(&ctx, &req, atomic, run_as.clone()).await;
        stop = match exit {
            ExitKind::Exited(0) => None,
            ExitKind::Cancelled => Some(Stop::Terminated),
            _ => Some(Stop::Failed(atomic.atomic_id)),
        };
    }
}

/// The checks and setup before the first process: danger rules, the
/// user, the script files.
async fn prepare(ctx: &TaskContext, req: &RunScript) -> Result<Option<RunAs>, Refusal> {
    // Up to 16 MiB of script is scanned: off the async workers. The scripts
    // come back out to be written without a second copy.
    let policy = ctx.policy.clone();
    let task_id = req.task_id.clone();
    let commands: Vec<String> = req.atomic_tasks.iter().map(|a| a.command.clone()).collect();
    let scripts = req.scripts.clone();
    let (checked, scripts) = tokio::task::spawn_blocking(move || {
        let checked = check_danger(&policy, &task_id, &commands, &scripts);
        (checked, scripts)
    })
    .await
    .map_err(|e| {
        refusal(
            ERR_DANGER_BLOCKED,
            format!("dangerous-operation check crashed: {e}"),
        )
    })?;
    checked?;
    let run_as = resolve_user(req).await?;
    let owner = run_as.clone();
    tokio::task::spawn_blocking(move || scripts::write_all(&scripts, owner.as_ref()))
        .await
        .map_err(|e| refusal(ERR_SCRIPT_WRITE, format!("script writer crashed: {e}")))?
        .map_err(|e| refusal(ERR_SCRIPT_WRITE, e.to_string()))?;
    Ok(run_as)
}

/// The dangerous-operation check, again on the agent (T6, T7): where the
/// scripts are written, the commands and the script contents.
/// Blocking: call from `spawn_blocking`.
fn check_danger(
    policy: &DangerPolicy,
    task_id: &str,
    commands: &[String],
    scripts: &[ScriptFile],
) -> Result<(), Refusal> {
    let mut verdict = Verdict::default();
    for s in scripts {
        verdict.merge(policy.check_destination(&s.dir, &s.name));
    }
    let contents: Vec<_> = scripts
        .iter()
        .map(|s| String::from_utf8_lossy(&s.content))
        .collect();
    let texts = commands
        .iter()
        .map(String::as_str)
        .chain(contents.iter().map(|c| c.as_ref()));
    if verdict.blocked.is_none() {
        verdict.merge(policy.check(texts));
    }
    for alarm in &verdict.alarms {
        tracing::warn!(task_id = %task_id, "running a task that {}", alarm.describe());
    }
    match verdict.blocked {
        Some(m) => Err(refusal(ERR_DANGER_BLOCKED, m.describe())),
        None => Ok(()),
    }
}

/// The named user, the agent's own user for a login environment, or none.
async fn resolve_user(req: &RunScript) -> Result<Option<RunAs>, Refusal> {
    if req.user.is_empty() && !req.login_env {
        return Ok(None);
    }
    let name = req.user.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        if name.is_empty() {
            user::current()
        } else {
            user::resolve(&name)
        }
    })
    .await
    .map_err(|e| refusal(ERR_SPAWN, format!("user lookup crashed: {e}")))?;
    resolved
        .map(Some)
        .map_err(|e| refusal(e.code(), e.to_string()))
}

/// RUNNING, then the process with its output, then the final status.
async fn run_atomic(
    ctx: &TaskContext,
    req: &RunScript,
    atomic: &AtomicTask,
    run_as: Option<RunAs>,
) -> ExitKind {
    let start_ms = now_ms();
    ctx.reporter
        .status(status(
            atomic.atomic_id,
            STATUS_RUNNING,
            ERR_RUNNING,
            "",
            start_ms,
            0,
        ))
        .await;
    let timeout_secs = effective_timeout(atomic.timeout_seconds);
    let exec = ExecRequest {
        command: atomic.command.clone(),
        timeout: Duration::from_secs(u64::from(timeout_secs)),
        output_limit: output_limit(req.output_limit),
        user: run_as,
        login_env: req.login_env,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(OUTPUT_CHUNKS);
    let (outcome, ()) = tokio::join!(
        ctx.executor.run(exec, tx, ctx.cancel.clone()),
        forward_output(rx, &ctx.reporter, atomic.atomic_id),
    );
    let mut done = final_status(atomic.atomic_id, timeout_secs, &outcome);
    done.start_time_ms = start_ms;
    ctx.reporter.status(done).await;
    outcome.exit
}

/// The final status of an atomic task that ran (or tried to).
pub fn final_status(atomic_id: u32, timeout_secs: u32, outcome: &ExecOutcome) -> TaskStatus {
    let end = outcome.end_ms;
    let start = outcome.start_ms;
    match &outcome.exit {
        ExitKind::Exited(0) => status(atomic_id, STATUS_SUCCESS, ERR_NONE, "", start, end),
        ExitKind::Exited(code) => {
            let mut st = status(atomic_id, STATUS_FAILED, ERR_NONE, "", start, end);
            st.exit_code = *code;
            st
        }
        ExitKind::Signaled(sig) => {
            let msg = format!("killed by signal {sig}");
            let mut st = status(atomic_id, STATUS_FAILED, ERR_NONE, &msg, start, end);
            st.exit_code = 128 + sig;
            st
        }
        ExitKind::TimedOut => {
            let msg = format!("timed out after {timeout_secs} s; the process group was killed");
            status(atomic_id, STATUS_TIMEOUT, ERR_NONE, &msg, start, end)
        }
        ExitKind::Cancelled => status(
            atomic_id,
            STATUS_DISCARDED,
            ERR_TERMINATED,
            "terminated",
            start,
            end,
        ),
        ExitKind::SpawnFailed(msg) => status(atomic_id, STATUS_FAILED, ERR_SPAWN, msg, start, end),
    }
}

fn not_run(atomic_id: u32, why: Stop) -> TaskStatus {
    let now = now_ms();
    match why {
        Stop::Failed(k) => {
            let msg = format!("not run: atomic task {k} did not succeed");
            status(atomic_id, STATUS_DISCARDED, ERR_NONE, &msg, now, now)
        }
        Stop::Terminated => status(
            atomic_id,
            STATUS_DISCARDED,
            ERR_TERMINATED,
            "terminated",
            now,
            now,
        ),
    }
}

async fn fail_all(reporter: &Reporter, atomics: &[AtomicTask], refusal: &Refusal) {
    let now = now_ms();
    for atomic in atomics {
        let st = status(
            atomic.atomic_id,
            STATUS_FAILED,
            refusal.code,
            &refusal.message,
            now,
            now,
        );
        reporter.status(st).await;
    }
}

/// Every atomic task discarded as terminated (cancelled while queued).
pub async fn terminate_all(reporter: &Reporter, atomics: &[AtomicTask]) {
    for atomic in atomics {
        reporter
            .status(not_run(atomic.atomic_id, Stop::Terminated))
            .await;
    }
}

fn refusal(code: i32, message: String) -> Refusal {
    Refusal { code, message }
}

fn status(atomic_id: u32, status: i32, code: i32, msg: &str, start: u64, end: u64) -> TaskStatus {
    TaskStatus {
        task_id: String::new(), // filled in by the Reporter
        atomic_id,
        status,
        error_code: code,
        error_msg: msg.into(),
        exit_code: 0,
        start_time_ms: start,
        end_time_ms: end,
    }
}

fn effective_timeout(secs: u32) -> u32 {
    if secs == 0 {
        DEFAULT_TIMEOUT_SECS
    } else {
        secs
    }
}

fn output_limit(limit: u64) -> usize {
    let limit = if limit == 0 {
        DEFAULT_OUTPUT_LIMIT
    } else {
        limit
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

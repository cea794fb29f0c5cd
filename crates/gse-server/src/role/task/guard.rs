//! The server's dangerous-operation check (T6, T7), before dispatch: every
//! command, script and script destination of a task (and every control
//! command of a plugin operation, for the proc role) against the
//! [`DangerPolicy`], and the alarms it raises. Agents check again with the
//! same rules before running.

use std::sync::Arc;

use gse_core::danger::{DangerMatch, DangerPolicy, Verdict};

use super::spec::ScriptTaskSpec;
use crate::role::alarm::{Alarm, AlarmKind, AlarmService};

/// Most alarm-only matches raised for one task (one per rule).
const MAX_ALARMS_PER_TASK: usize = 10;
/// Agents named in an alarm's message; the rest are counted.
const AGENTS_NAMED: usize = 5;

/// A rule that matched, and in which part of the task.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Finding {
    pub matched: DangerMatch,
    /// "the command of atomic task 0", "script bk_gse_script_1.sh".
    pub source: String,
}

impl Finding {
    pub fn describe(&self) -> String {
        format!("{} (in {})", self.matched.describe(), self.source)
    }
}

/// What the rules say about a task.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Findings {
    /// The first blocking match: nothing is dispatched.
    pub blocked: Option<Finding>,
    /// Alarm-only matches, at most one per rule.
    pub alarms: Vec<Finding>,
}

/// One part of a task to check, and how a message names it.
pub(crate) enum Part<'a> {
    /// A command or a script's content.
    Text(&'a str, String),
    /// Where a script is written.
    Destination { dir: &'a str, name: &'a str },
}

/// Checks every command, script and script destination of `spec`.
pub(super) fn check(policy: &DangerPolicy, spec: &ScriptTaskSpec) -> Findings {
    let commands = spec.atomic_tasks.iter().map(|a| {
        let source = format!("the command of atomic task {}", a.id);
        Part::Text(a.command.as_str(), source)
    });
    let destinations = spec.scripts.iter().map(|s| Part::Destination {
        dir: &s.dir,
        name: &s.name,
    });
    let scripts = spec
        .scripts
        .iter()
        .map(|s| Part::Text(s.content.as_str(), format!("script {}", s.name)));
    check_parts(policy, commands.chain(destinations).chain(scripts))
}

/// Checks each part; the first block, and one alarm per rule.
pub(crate) fn check_parts<'a>(
    policy: &DangerPolicy,
    parts: impl IntoIterator<Item = Part<'a>>,
) -> Findings {
    let mut findings = Findings::default();
    for part in parts {
        let (verdict, source) = match part {
            Part::Text(text, source) => (policy.check([text]), source),
            Part::Destination { dir, name } => (
                policy.check_destination(dir, name),
                "the destination of a script".to_string(),
            ),
        };
        findings.add(verdict, &source);
        if findings.blocked.is_some() {
            break;
        }
    }
    findings
}

impl Findings {
    fn add(&mut self, verdict: Verdict, source: &str) {
        if self.blocked.is_none()
            && let Some(matched) = verdict.blocked
        {
            self.blocked = Some(Finding {
                matched,
                source: source.to_string(),
            });
        }
        for matched in verdict.alarms {
            let seen = self.alarms.iter().any(|f| f.matched.rule == matched.rule);
            if !seen && self.alarms.len() < MAX_ALARMS_PER_TASK {
                self.alarms.push(Finding {
                    matched,
                    source: source.to_string(),
                });
            }
        }
    }
}

/// [`check`] on the blocking pool: scripts may be megabytes of lines.
pub(super) async fn check_off_thread(
    policy: Arc<DangerPolicy>,
    spec: ScriptTaskSpec,
) -> (ScriptTaskSpec, Findings) {
    let work = move || {
        let findings = check(&policy, &spec);
        (spec, findings)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Raises the task's dangerous-operation alarms (or logs them when this
/// node runs no alarm role).
pub(crate) fn raise(
    alarms: Option<&AlarmService>,
    node_id: &str,
    task_id: &str,
    agents: &[String],
    findings: &Findings,
) {
    let whom = agents_phrase(agents);
    let mut out = Vec::new();
    if let Some(f) = &findings.blocked {
        let message = format!(
            "task {task_id} for {whom} was blocked and not dispatched: {}",
            f.describe()
        );
        out.push((AlarmKind::DangerousOperationBlocked, f, message));
    }
    for f in &findings.alarms {
        let outcome = if findings.blocked.is_some() {
            "was blocked by another rule"
        } else {
            "runs"
        };
        let message = format!("task {task_id} for {whom} {outcome}: {}", f.describe());
        out.push((AlarmKind::DangerousOperation, f, message));
    }
    for (kind, finding, message) in out {
        match alarms {
            Some(alarms) => alarms.raise(Alarm::about_task(
                kind,
                node_id,
                task_id,
                agents,
                &finding.matched.rule,
                message,
            )),
            None => tracing::warn!(task_id, rule = %finding.matched.rule, "{message}"),
        }
    }
}

/// "2 agents (0:10.0.0.1, 0:10.0.0.2)", naming at most a few.
fn agents_phrase(agents: &[String]) -> String {
    let named: Vec<&str> = agents
        .iter()
        .take(AGENTS_NAMED)
        .map(String::as_str)
        .collect();
    let more = agents.len().saturating_sub(AGENTS_NAMED);
    let noun = if agents.len() == 1 { "agent" } else { "agents" };
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    format!("{} {noun} ({}{tail})", agents.len(), named.join(", "))
}

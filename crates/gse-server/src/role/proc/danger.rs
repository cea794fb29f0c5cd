//! The dangerous-operation check of plugin operations (T6, T7, issue 9):
//! each operation's control commands (`start_cmd` … `version_cmd`) against
//! the same [`DangerPolicy`] as script tasks, before anything is queued.
//!
//! A blocked operation is answered 65535 on every agent it names, with a
//! message naming the rule and the field, and is never dispatched (any op
//! type: the agent would keep the spec and run its commands later); an
//! alarm-only match runs and raises an alarm. Agents check again before
//! running (`gse-agent/src/plugin`).

use gse_core::danger::DangerPolicy;

use super::codes::CODE_FAILED;
use super::model::{Answer, OpRequest, ProcTask};
use crate::role::alarm::AlarmService;
use crate::role::task::guard::{self, Findings, Part};

/// What the rules say about each operation of `ops`, in order.
pub(super) fn check(policy: &DangerPolicy, ops: &[OpRequest]) -> Vec<Findings> {
    ops.iter()
        .map(|op| {
            let commands = op.spec.control_commands().into_iter();
            let parts = commands
                .filter(|(_, cmd)| !cmd.trim().is_empty())
                .map(|(field, cmd)| Part::Text(cmd, field.to_string()));
            guard::check_parts(policy, parts)
        })
        .collect()
}

/// Refuses the entries of blocked operations and raises the alarms.
pub(super) fn apply(
    task: &ProcTask,
    findings: &[Findings],
    alarms: Option<&AlarmService>,
    node_id: &str,
) {
    {
        let mut st = task.state.lock();
        for index in 0..st.entries.len() {
            let op = st.entries[index].op;
            if let Some(f) = &findings[op].blocked {
                let why = format!("refused by the dangerous-operation check: {}", f.describe());
                st.close(index, None, Answer::new(CODE_FAILED, why));
            }
        }
    }
    for (op, f) in task.ops.iter().zip(findings) {
        if f.blocked.is_some() || !f.alarms.is_empty() {
            let agents: Vec<String> = op.targets.iter().map(|(name, _)| name.clone()).collect();
            guard::raise(alarms, node_id, &task.id, &agents, f);
        }
    }
}

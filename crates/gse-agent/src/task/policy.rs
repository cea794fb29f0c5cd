//! The agent's dangerous-operation policy (T6, T7), from the rules the
//! server pushed in `RegisterAck.danger_rules`.
//!
//! The server checks a task before dispatch; the agent checks it again
//! before running, so a rule still holds if something between them (a
//! proxy, a bug, a replayed frame) let a task through. When the server sent
//! no rules or a rule the agent cannot use, the agent falls back to the
//! built-in set rather than checking nothing.

use gse_core::danger::{DangerAction, DangerPolicy, DangerRuleSpec};
use gse_proto::link::DangerRule;

/// Why the pushed rules were not used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the server sent no dangerous-operation rules")]
    Empty,
    #[error(
        "dangerous-operation rule {name:?} has unknown action {action:?} (expected alarm or block)"
    )]
    BadAction { name: String, action: String },
    #[error(transparent)]
    Rules(#[from] gse_core::danger::DangerError),
}

/// The policy for this link session: the server's rules, or the built-in
/// ones (with a warning) when those are unusable.
pub fn from_register_ack(rules: &[DangerRule]) -> DangerPolicy {
    match try_from_rules(rules) {
        Ok(policy) => policy,
        Err(e) => {
            tracing::warn!(error = %e, "using the built-in dangerous-operation rules instead of the server's");
            DangerPolicy::builtin()
        }
    }
}

/// Converts and compiles the pushed rules.
pub fn try_from_rules(rules: &[DangerRule]) -> Result<DangerPolicy, PolicyError> {
    if rules.is_empty() {
        return Err(PolicyError::Empty);
    }
    let specs = rules
        .iter()
        .map(|r| {
            let action = DangerAction::parse(&r.action).ok_or_else(|| PolicyError::BadAction {
                name: r.name.clone(),
                action: r.action.clone(),
            })?;
            Ok(DangerRuleSpec {
                name: r.name.clone(),
                pattern: r.pattern.clone(),
                action,
                description: r.description.clone(),
            })
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    Ok(DangerPolicy::new(&specs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, pattern: &str, action: &str) -> DangerRule {
        DangerRule {
            name: name.into(),
            pattern: pattern.into(),
            action: action.into(),
            description: "test rule".into(),
        }
    }

    #[test]
    fn t7_pushed_rules_are_used() {
        let policy = from_register_ack(&[rule("no_foo", r"^foo\b", "block")]);
        assert!(policy.check(["foo bar"]).blocked.is_some());
        // The built-in rules are replaced, not added to.
        assert!(policy.check(["rm -rf /"]).blocked.is_none());
    }

    #[test]
    fn t6_unusable_rules_fall_back_to_builtin() {
        assert!(matches!(try_from_rules(&[]), Err(PolicyError::Empty)));
        let bad_action = [rule("x", "x", "explode")];
        assert!(matches!(
            try_from_rules(&bad_action),
            Err(PolicyError::BadAction { .. })
        ));
        let bad_regex = [rule("x", "(", "block")];
        assert!(try_from_rules(&bad_regex).is_err());
        for rules in [&[][..], &bad_action, &bad_regex] {
            let policy = from_register_ack(rules);
            assert!(policy.check(["rm -rf /"]).blocked.is_some());
        }
    }
}

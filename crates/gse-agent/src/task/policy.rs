//! The agent's dangerous-operation policy (T6, T7), from the rules the
//! server pushed in `RegisterAck.danger_rules`.
//!
//! The server checks a task before dispatch; the agent checks it again
//! before running, so a rule still holds if something between them (a
//! proxy, a bug, a replayed frame) let a task through. The same policy
//! checks plugin control commands ([`crate::plugin`]). A rule naming a
//! built-in matcher this agent does not have (a newer server's) is skipped
//! with a warning: the server checked it before dispatch. When the server
//! sent no rules or a rule the agent cannot use, the agent falls back to
//! the built-in set rather than checking nothing.

use gse_core::danger::{DangerAction, DangerPolicy, DangerRuleSpec, is_unknown_builtin};
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
        .filter(|r| {
            let unknown = is_unknown_builtin(&r.pattern);
            if unknown {
                tracing::warn!(rule = %r.name, pattern = %r.pattern, "skipping a dangerous-operation rule whose built-in matcher this agent does not have; the server still checks it");
            }
            !unknown
        })
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
    if specs.is_empty() {
        return Err(PolicyError::Empty);
    }
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

    #[test]
    fn r9_6_builtin_rules_travel_by_name_and_unknown_ones_are_skipped() {
        let rules = [
            rule("rm_root", "builtin:rm_root", "block"),
            rule("from_the_future", "builtin:not_in_this_build", "block"),
            rule("no_foo", r"^foo\b", "alarm"),
        ];
        let policy = try_from_rules(&rules).unwrap();
        let names: Vec<&str> = policy.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["rm_root", "no_foo"]);
        assert!(policy.check(["\\rm -rf /"]).blocked.is_some());
        assert_eq!(policy.check(["sudo foo"]).alarms.len(), 1);
    }
}

//! Dangerous-operation rules (T6, T7): which commands are too risky to run
//! blindly, and what to do about them.
//!
//! A rule's action is `block` (do not run; the task fails naming the rule,
//! and an alarm is raised) or `alarm` (run it, and raise an alarm). It
//! matches either by a regular expression (operators' rules: against each
//! logical line and each command's words) or by a built-in matcher in code
//! (`pattern = "builtin:<name>"`, [`builtin_rules`]: the destructive ones
//! block, the disruptive ones alarm). Commands are found the way the shell
//! finds them ([`lexer`]: quotes, continuations, separators, substitutions;
//! [`command`]: wrappers such as `sudo` and `sh -c` strings), and
//! [`DangerPolicy::check_destination`] checks where a script is written.
//! The server applies the resolved [`DangerPolicy`] before dispatch and
//! pushes it to agents at registration, which apply it again before they
//! run anything. This is a guard against accidents, not a security
//! boundary: an encoded payload (`echo … | base64 -d | sh`) always gets
//! through (docs/DANGER.md).

use regex::Regex;
use serde::{Deserialize, Serialize};

mod builtin;
mod command;
mod lexer;
mod paths;
mod scan;

use builtin::{Builtin, CATALOGUE, PREFIX};
use scan::{Matcher, Scan};

/// What happens when a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DangerAction {
    /// Run the command and raise an alarm.
    Alarm,
    /// Do not run it; fail the task and raise an alarm.
    Block,
}

impl DangerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DangerAction::Alarm => "alarm",
            DangerAction::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alarm" => Some(DangerAction::Alarm),
            "block" => Some(DangerAction::Block),
            _ => None,
        }
    }
}

/// One rule as configured (and as carried on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DangerRuleSpec {
    /// Short unique name, shown in error messages and alarms.
    pub name: String,
    /// A regular expression (Rust `regex` syntax) matched against each
    /// logical line and each command's words, or `builtin:<name>` for a
    /// built-in matcher.
    pub pattern: String,
    pub action: DangerAction,
    #[serde(default)]
    pub description: String,
}

/// The built-in rule set, with default actions.
pub fn builtin_rules() -> Vec<DangerRuleSpec> {
    CATALOGUE
        .iter()
        .map(|(_, name, action, description)| DangerRuleSpec {
            name: (*name).into(),
            pattern: format!("{PREFIX}{name}"),
            action: *action,
            description: (*description).into(),
        })
        .collect()
}

/// Whether `pattern` names a built-in matcher this build does not have
/// (a newer server's rule); such a rule cannot be compiled here.
pub fn is_unknown_builtin(pattern: &str) -> bool {
    pattern
        .strip_prefix(PREFIX)
        .is_some_and(|name| Builtin::by_name(name).is_none())
}

/// Why rules could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DangerError {
    #[error(
        "dangerous-operation rule {name:?}: pattern {pattern:?} is not a valid regular expression: {source}"
    )]
    BadPattern {
        name: String,
        pattern: String,
        source: regex::Error,
    },
    #[error("dangerous-operation rule {0:?} is defined twice")]
    Duplicate(String),
    #[error(
        "dangerous-operation rule {name:?}: there is no built-in matcher {matcher:?}; built-in ones are {known}"
    )]
    UnknownBuiltin {
        name: String,
        matcher: String,
        known: String,
    },
    #[error(
        "dangerous-operation rule {0:?} has an empty pattern, which would match every line; give a regular expression"
    )]
    EmptyPattern(String),
}

/// A rule that matched, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DangerMatch {
    pub rule: String,
    pub action: DangerAction,
    pub description: String,
    /// The line that matched (trimmed, at most 200 bytes).
    pub line: String,
}

impl DangerMatch {
    /// One sentence for an error message or an alarm.
    pub fn describe(&self) -> String {
        format!(
            "dangerous-operation rule {:?} ({}, action {}) matched: {}",
            self.rule,
            self.description,
            self.action.as_str(),
            self.line
        )
    }
}

/// What the rules say about a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first blocking match, if any: the task must not run.
    pub blocked: Option<DangerMatch>,
    /// Every alarm-only match: the task runs, each raises an alarm.
    pub alarms: Vec<DangerMatch>,
}

impl Verdict {
    /// Adds `other`: its block if this has none, its alarms for rules not
    /// reported yet.
    pub fn merge(&mut self, other: Verdict) {
        if self.blocked.is_none() {
            self.blocked = other.blocked;
        }
        for a in other.alarms {
            if !self.alarms.iter().any(|m| m.rule == a.rule) {
                self.alarms.push(a);
            }
        }
    }
}

/// Compiled rules.
#[derive(Clone, Debug)]
pub struct DangerPolicy {
    rules: Vec<(DangerRuleSpec, Matcher)>,
}

impl DangerPolicy {
    pub fn new(specs: &[DangerRuleSpec]) -> Result<Self, DangerError> {
        let mut rules: Vec<(DangerRuleSpec, Matcher)> = Vec::with_capacity(specs.len());
        for spec in specs {
            if rules.iter().any(|(r, _)| r.name == spec.name) {
                return Err(DangerError::Duplicate(spec.name.clone()));
            }
            rules.push((spec.clone(), compile(spec)?));
        }
        Ok(DangerPolicy { rules })
    }

    /// The built-in rules with their default actions.
    pub fn builtin() -> Self {
        Self::new(&builtin_rules()).expect("built-in rules compile")
    }

    pub fn specs(&self) -> impl Iterator<Item = &DangerRuleSpec> {
        self.rules.iter().map(|(s, _)| s)
    }

    /// Checks every text (commands, script contents): its lines and the
    /// commands in it. Each rule reports its first match only, and a block
    /// ends the check, so a hostile script of many matching lines costs no
    /// more than one.
    pub fn check<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Verdict {
        let mut scan = Scan::new(&self.rules);
        for text in texts {
            if scan.text(text).is_break() {
                break;
            }
        }
        scan.verdict
    }

    /// Checks writing a script named `name` into directory `dir`.
    pub fn check_destination(&self, dir: &str, name: &str) -> Verdict {
        let mut scan = Scan::new(&self.rules);
        let _ = scan.destination(dir, name);
        scan.verdict
    }
}

/// The matcher of one rule.
fn compile(spec: &DangerRuleSpec) -> Result<Matcher, DangerError> {
    if let Some(matcher) = spec.pattern.strip_prefix(PREFIX) {
        let known = || CATALOGUE.iter().map(|c| c.1).collect::<Vec<_>>().join(", ");
        return Builtin::by_name(matcher)
            .map(Matcher::Builtin)
            .ok_or_else(|| DangerError::UnknownBuiltin {
                name: spec.name.clone(),
                matcher: matcher.to_string(),
                known: known(),
            });
    }
    if spec.pattern.is_empty() {
        return Err(DangerError::EmptyPattern(spec.name.clone()));
    }
    Regex::new(&spec.pattern)
        .map(Matcher::Regex)
        .map_err(|source| DangerError::BadPattern {
            name: spec.name.clone(),
            pattern: spec.pattern.clone(),
            source,
        })
}

#[cfg(test)]
mod tests;

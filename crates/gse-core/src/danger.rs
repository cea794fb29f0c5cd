//! Dangerous-operation rules (T6, T7): which commands are too risky to run
//! blindly, and what to do about them.
//!
//! A rule is a regular expression matched against every non-comment line of
//! a command and of each script a task writes; its action is `block` (do not
//! run; the task fails naming the rule, and an alarm is raised) or `alarm`
//! (run it, and raise an alarm). [`builtin_rules`] is the default set: the
//! destructive rules block, the disruptive ones alarm. Operators override
//! actions and add rules in the server config; the server pushes the
//! resolved set to agents at registration, so both sides apply the same
//! [`DangerPolicy`] (the server before dispatch, the agent before it runs).

use regex::Regex;
use serde::{Deserialize, Serialize};

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
    /// Regular expression (Rust `regex` syntax), matched per line.
    pub pattern: String,
    pub action: DangerAction,
    #[serde(default)]
    pub description: String,
}

/// Where a command begins: the start of a line or after a shell separator,
/// optionally behind a wrapper such as `sudo` or `nohup`. So `rm` in `firm`,
/// `--rm`, or `echo reboot` does not count.
const START: &str =
    r#"(?:^|[;&|(`{!])\s*(?:(?:sudo|nohup|time|exec|nice|env|xargs|command)\s+(?:-\S+\s+)*)*"#;
/// Where an argument ends.
const END: &str = r#"(?:["']?\s*$|["']?\s*[;&|)`]|["']?\s+)"#;

fn rule(name: &str, action: DangerAction, description: &str, pattern: String) -> DangerRuleSpec {
    DangerRuleSpec {
        name: name.into(),
        pattern,
        action,
        description: description.into(),
    }
}

/// The built-in rule set.
pub fn builtin_rules() -> Vec<DangerRuleSpec> {
    use DangerAction::{Alarm, Block};
    let top_dirs = "bin|boot|dev|etc|home|lib|lib32|lib64|opt|proc|root|run|sbin|srv|sys|usr|var";
    vec![
        rule(
            "rm_root",
            Block,
            "recursive delete of / or a top-level system directory",
            format!(
                r#"{START}(?:/bin/|/usr/bin/)?rm\s+(?:-{{1,2}}[\w-]+\s+)*-{{1,2}}\w*[rR]\w*\s+(?:-{{1,2}}[\w-]+\s+)*["']?/+(?:(?:{top_dirs})/*)?\*?{END}"#
            ),
        ),
        rule(
            "mkfs",
            Block,
            "making a file system (erases a device)",
            format!(r"{START}(?:/s?bin/|/usr/s?bin/)?mkfs(?:\.\w+)?(?:\s|$)"),
        ),
        rule(
            "dd_to_device",
            Block,
            "dd writing onto a block device",
            format!(
                r"{START}dd\s[^;&|]*\bof=/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|dm-|md|loop|disk|mapper/)"
            ),
        ),
        rule(
            "fork_bomb",
            Block,
            "a fork bomb",
            r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:".into(),
        ),
        rule(
            "overwrite_passwd",
            Block,
            "overwriting /etc/passwd, /etc/shadow, /etc/group or /etc/sudoers",
            format!(
                r"(?:>\s*/etc/(?:passwd|shadow|group|gshadow|sudoers)\b|{START}tee\s+(?:-\w+\s+)*/etc/(?:passwd|shadow|group|gshadow|sudoers)\b|{START}(?:cp|mv|install)\s[^;&|]*\s/etc/(?:passwd|shadow|group|gshadow|sudoers)\s*(?:$|[;&|]))"
            ),
        ),
        rule(
            "chmod_777_root",
            Block,
            "making the whole file system world-writable",
            format!(
                r#"{START}chmod\s+(?:-\w+\s+)*(?:-\w*R\w*\s+(?:-\w+\s+)*0?777|0?777\s+(?:-\w+\s+)*-\w*R\w*)\s+["']?/+\*?{END}"#
            ),
        ),
        rule(
            "shutdown",
            Alarm,
            "shutting down or rebooting the host",
            format!(
                r"{START}(?:/s?bin/|/usr/s?bin/)?(?:shutdown|reboot|halt|poweroff)(?:\s|$|[;&|)])"
            ),
        ),
        rule(
            "systemctl_power",
            Alarm,
            "shutting down or rebooting the host through systemd",
            format!(r"{START}systemctl\s+(?:-\S+\s+)*(?:reboot|poweroff|halt|kexec)\b"),
        ),
        rule(
            "init_runlevel",
            Alarm,
            "switching to runlevel 0 or 6",
            format!(r"{START}(?:/s?bin/)?(?:telinit|init)\s+[06](?:\s|$|[;&|])"),
        ),
    ]
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

/// Compiled rules.
#[derive(Clone, Debug)]
pub struct DangerPolicy {
    rules: Vec<(DangerRuleSpec, Regex)>,
}

impl DangerPolicy {
    pub fn new(specs: &[DangerRuleSpec]) -> Result<Self, DangerError> {
        let mut rules: Vec<(DangerRuleSpec, Regex)> = Vec::with_capacity(specs.len());
        for spec in specs {
            if rules.iter().any(|(r, _)| r.name == spec.name) {
                return Err(DangerError::Duplicate(spec.name.clone()));
            }
            let re = Regex::new(&spec.pattern).map_err(|source| DangerError::BadPattern {
                name: spec.name.clone(),
                pattern: spec.pattern.clone(),
                source,
            })?;
            rules.push((spec.clone(), re));
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

    /// Checks every text (commands, script contents) line by line; lines
    /// starting with `#` are comments and are skipped.
    pub fn check<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Verdict {
        // Each rule reports its first match only, and a block ends the
        // check: a hostile script of many matching lines costs no more than
        // one.
        let mut verdict = Verdict::default();
        let mut matched = vec![false; self.rules.len()];
        for text in texts {
            let lines = text.lines().map(str::trim);
            for line in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
                for (i, (spec, re)) in self.rules.iter().enumerate() {
                    if matched[i] || !re.is_match(line) {
                        continue;
                    }
                    matched[i] = true;
                    let m = DangerMatch {
                        rule: spec.name.clone(),
                        action: spec.action,
                        description: spec.description.clone(),
                        line: line.chars().take(200).collect(),
                    };
                    match spec.action {
                        DangerAction::Block => {
                            verdict.blocked = Some(m);
                            return verdict;
                        }
                        DangerAction::Alarm => verdict.alarms.push(m),
                    }
                }
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests;

//! The rules against the cases of docs/DANGER.md (read from the doc, so the
//! two cannot drift), operators' rules, reporting, and the time bound.

use std::time::{Duration, Instant};

use super::*;

const DOC: &str = include_str!("../../../../docs/DANGER.md");

/// The rows of the table in the section `## {heading}` of docs/DANGER.md,
/// each cell unquoted (backticks removed, `\|` is `|`, `\n` a line break).
fn doc_table(heading: &str) -> Vec<Vec<String>> {
    let section = DOC
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/DANGER.md has no section {heading:?}"));
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(cells)
        .collect();
    assert!(rows.len() > 5, "section {heading:?} has a table of cases");
    rows
}

fn cells(row: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = row.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.remove(0);
    out.into_iter().map(|c| unquote(&c)).collect()
}

/// `` `x` `` or ``` `` x `` ``` to `x`, with `\n` made a line break.
fn unquote(cell: &str) -> String {
    let cell = cell.trim();
    let ticks = cell.len() - cell.trim_start_matches('`').len();
    let inner = &cell[ticks..cell.len() - ticks];
    let inner = if ticks > 1 { inner.trim() } else { inner };
    inner.replace("\\n", "\n")
}

/// The rules that matched, blocked first.
fn rules_of(v: &Verdict) -> Vec<String> {
    v.blocked
        .iter()
        .chain(&v.alarms)
        .map(|m| m.rule.clone())
        .collect()
}

#[test]
fn every_case_of_docs_danger_md() {
    let policy = DangerPolicy::builtin();
    let mut wrong = Vec::new();
    for row in doc_table("Command cases") {
        let (command, want) = (&row[0], &row[1]);
        let got = rules_of(&policy.check([command.as_str()]));
        let ok = if want == "pass" {
            got.is_empty()
        } else {
            got.first() == Some(want)
        };
        if !ok {
            wrong.push(format!("{command:?}: want {want}, got {got:?}"));
        }
    }
    for row in doc_table("Destination cases") {
        let (dir, name, want) = (&row[0], &row[1], &row[2]);
        let got = rules_of(&policy.check_destination(dir, name));
        let ok = if want == "pass" {
            got.is_empty()
        } else {
            got == [want.clone()]
        };
        if !ok {
            wrong.push(format!("{dir:?} {name:?}: want {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_builtin_rule_has_a_case_and_a_row_in_the_rule_table() {
    let cases = doc_table("Command cases");
    let destinations = doc_table("Destination cases");
    let rule_table = doc_table("Built-in rules");
    for spec in builtin_rules() {
        let named = |rows: &[Vec<String>], col: usize| rows.iter().any(|r| r[col] == spec.name);
        assert!(
            named(&cases, 1) || named(&destinations, 2),
            "docs/DANGER.md has no case for {}",
            spec.name
        );
        let row = rule_table
            .iter()
            .find(|r| r[0] == spec.name)
            .unwrap_or_else(|| panic!("docs/DANGER.md's rule table lacks {}", spec.name));
        assert_eq!(
            row[1],
            spec.action.as_str(),
            "default action of {}",
            spec.name
        );
    }
}

#[test]
fn scripts_are_checked_line_by_line() {
    let script = "#!/bin/bash\nset -e\necho start\nrm -rf /\n";
    let v = DangerPolicy::builtin().check(["/tmp/x.sh", script]);
    assert_eq!(v.blocked.unwrap().line, "rm -rf /");
    // The line shown is the source's, continuations joined.
    let v = DangerPolicy::builtin().check(["echo a\nsudo rm -rf \\\n   /var  # oops\necho b"]);
    assert_eq!(v.blocked.unwrap().line, "sudo rm -rf /var # oops");
    let v = DangerPolicy::builtin().check(["x=1; sh -c 'rm -rf /'"]);
    assert_eq!(v.blocked.unwrap().line, "x=1; sh -c 'rm -rf /'");
}

fn with_rule(pattern: &str, action: DangerAction) -> DangerPolicy {
    let mut specs = builtin_rules();
    specs.push(DangerRuleSpec {
        name: "operator".into(),
        pattern: pattern.into(),
        action,
        description: "an operator's rule".into(),
    });
    DangerPolicy::new(&specs).unwrap()
}

#[test]
fn operator_rules_see_commands_as_the_shell_does() {
    let policy = with_rule(r"^touch\s+/tmp/marker", DangerAction::Block);
    for cmd in [
        "touch /tmp/marker",
        "\\touch /tmp/marker",
        "\"touch\" /tmp/marker",
        "t''ouch /tmp/marker",
        "tou\\\nch /tmp/marker",
        "true && touch /tmp/marker",
        "if true; then touch /tmp/marker; fi",
        "sh -c 'touch /tmp/marker'",
        "sudo -u bob touch /tmp/marker",
        "timeout 5 touch /tmp/marker",
        "echo $(touch /tmp/marker)",
        "eval \"touch /tmp/marker\"",
        "touch '/tmp/marker'",
    ] {
        let v = policy.check([cmd]);
        assert_eq!(
            v.blocked.map(|m| m.rule).as_deref(),
            Some("operator"),
            "{cmd:?}"
        );
    }
    for cmd in [
        "echo touch /tmp/marker",
        "touch /tmp/other",
        "# touch /tmp/marker",
    ] {
        assert!(policy.check([cmd]).blocked.is_none(), "{cmd:?}");
    }
    // Redirections are seen as `> target`; raw lines still match as before.
    let policy = with_rule(r"> /srv/data/", DangerAction::Alarm);
    assert_eq!(
        rules_of(&policy.check(["echo x >\"/srv/data/f\""])),
        ["operator"]
    );
    let policy = with_rule(r"curl[^|]*\|\s*(ba)?sh", DangerAction::Block);
    assert!(policy.check(["curl -s http://x | sh"]).blocked.is_some());
}

#[test]
fn actions_can_be_changed_and_rules_kept_by_name() {
    let mut specs = builtin_rules();
    specs
        .iter_mut()
        .for_each(|s| s.action = DangerAction::Alarm);
    let policy = DangerPolicy::new(&specs).unwrap();
    let v = policy.check(["rm -rf /; reboot"]);
    assert!(v.blocked.is_none());
    assert_eq!(rules_of(&v), ["rm_root", "shutdown"]);
    // Only one built-in rule, by its `builtin:` name.
    let only = [DangerRuleSpec {
        name: "no_mkfs".into(),
        pattern: "builtin:mkfs".into(),
        action: DangerAction::Block,
        description: String::new(),
    }];
    let policy = DangerPolicy::new(&only).unwrap();
    assert_eq!(
        rules_of(&policy.check(["rm -rf /; mkfs /dev/sdz"])),
        ["no_mkfs"]
    );
}

#[test]
fn bad_rules_are_refused_with_their_name() {
    let rule = |pattern: &str| DangerRuleSpec {
        name: "bad".into(),
        pattern: pattern.into(),
        action: DangerAction::Alarm,
        description: String::new(),
    };
    assert!(matches!(
        DangerPolicy::new(&[rule("(")]),
        Err(DangerError::BadPattern { .. })
    ));
    assert!(matches!(
        DangerPolicy::new(&[rule("")]),
        Err(DangerError::EmptyPattern(_))
    ));
    let e = DangerPolicy::new(&[rule("builtin:nope")]).unwrap_err();
    assert!(e.to_string().contains("rm_root"), "{e}");
    assert!(is_unknown_builtin("builtin:nope") && !is_unknown_builtin("builtin:rm_root"));
    assert!(!is_unknown_builtin("^nope"));
    let dup = [builtin_rules()[0].clone(), builtin_rules()[0].clone()];
    assert!(matches!(
        DangerPolicy::new(&dup),
        Err(DangerError::Duplicate(_))
    ));
}

#[test]
fn many_matching_lines_report_one_match_per_rule() {
    let script = "shutdown -r now\n".repeat(10_000);
    let v = DangerPolicy::builtin().check([script.as_str()]);
    assert_eq!(v.alarms.len(), 1);
    let script = format!(
        "{}rm -rf /\n{}",
        "reboot\n".repeat(1000),
        "mkfs /dev/sdz\n".repeat(1000)
    );
    let v = DangerPolicy::builtin().check([script.as_str()]);
    assert_eq!(v.blocked.unwrap().rule, "rm_root");
    assert_eq!(v.alarms.len(), 1);
}

#[test]
fn verdicts_merge_keeping_the_first_block_and_one_alarm_per_rule() {
    let p = DangerPolicy::builtin();
    let mut v = p.check(["reboot"]);
    v.merge(p.check_destination("/etc", "x"));
    v.merge(p.check(["reboot; rm -rf /"]));
    assert_eq!(v.blocked.as_ref().unwrap().rule, "script_destination");
    assert_eq!(v.blocked.unwrap().line, "/etc/x");
    assert_eq!(v.alarms.len(), 1);
}

/// A 5 MiB script of ordinary shell, every construct the lexer knows.
fn big_script() -> String {
    let block = r#"#!/bin/bash
set -euo pipefail
# build the package
DIR="/tmp/build-$$"
if [ -d "$DIR" ]; then
  rm -rf "$DIR" /tmp/old-build
fi
mkdir -p "$DIR" && cd "$DIR"
for f in a b c; do echo "$f" | tr a-z A-Z >> out.txt; done
cat <<'EOF' > notes.txt
some text with a ' quote
EOF
log() { printf '%s %s\n' "$(date +%s)" "$*" >&2; }
log "done: $(wc -l < out.txt) lines, `hostname`"
sudo -u app timeout 30 curl -s http://127.0.0.1/x | grep -v '^#' | awk '{print $1}' > /tmp/list
"#;
    block.repeat(5 * 1024 * 1024 / block.len() + 1)
}

#[test]
fn a_5_mib_script_checks_well_under_a_second() {
    let script = big_script();
    assert!(script.len() >= 5 * 1024 * 1024);
    let policy = with_rule(r"^touch\s+/tmp/marker", DangerAction::Block);
    let started = Instant::now();
    let v = policy.check([script.as_str()]);
    let took = started.elapsed();
    assert_eq!(v, Verdict::default());
    // About 0.05 s in a release build on one core; this crate's tests run
    // unoptimised (about ten times slower) on a shared 2-core machine.
    let bound = if cfg!(debug_assertions) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(1)
    };
    assert!(
        took < bound,
        "a 5 MiB script took {took:?} (bound {bound:?})"
    );
}

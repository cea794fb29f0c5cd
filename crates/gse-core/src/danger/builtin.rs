//! The built-in rules: each a matcher in code over one unwrapped command
//! (program, arguments, output-redirection targets), a logical line (the
//! fork bomb), or a script destination. Configured as
//! `pattern = "builtin:<name>"`; [`CATALOGUE`] gives each its default
//! action and description.

use std::sync::LazyLock;

use regex::Regex;

use super::DangerAction::{self, Alarm, Block};
use super::command::program;
use super::paths::{
    is_account_file, is_account_name, is_block_device, is_etc, is_root_or_system_dir,
    is_unsafe_script_destination,
};

/// A built-in matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Builtin {
    RmRoot,
    Mkfs,
    DdToDevice,
    WriteToDevice,
    WipeDevice,
    FindDelete,
    ForkBomb,
    OverwritePasswd,
    Chmod777Root,
    ChownRoot,
    Shutdown,
    SystemctlPower,
    InitRunlevel,
    ScriptDestination,
}

/// Every built-in rule: matcher, name, default action, description.
pub(super) const CATALOGUE: &[(Builtin, &str, DangerAction, &str)] = &[
    (
        Builtin::RmRoot,
        "rm_root",
        Block,
        "recursive delete of / or a top-level system directory",
    ),
    (
        Builtin::Mkfs,
        "mkfs",
        Block,
        "making a file system (erases a device)",
    ),
    (
        Builtin::DdToDevice,
        "dd_to_device",
        Block,
        "dd writing onto a block device",
    ),
    (
        Builtin::WriteToDevice,
        "write_to_device",
        Block,
        "redirecting, tee-ing or copying onto a block device",
    ),
    (
        Builtin::WipeDevice,
        "wipe_device",
        Block,
        "wiping a block device (wipefs -a, blkdiscard, shred)",
    ),
    (
        Builtin::FindDelete,
        "find_delete",
        Block,
        "find deleting everything under / or a top-level system directory",
    ),
    (Builtin::ForkBomb, "fork_bomb", Block, "a fork bomb"),
    (
        Builtin::OverwritePasswd,
        "overwrite_passwd",
        Block,
        "overwriting, truncating, moving or deleting /etc/passwd, /etc/shadow, /etc/group, /etc/gshadow or /etc/sudoers",
    ),
    (
        Builtin::Chmod777Root,
        "chmod_777_root",
        Block,
        "making / or a top-level system directory world-writable, recursively",
    ),
    (
        Builtin::ChownRoot,
        "chown_root",
        Block,
        "recursive chown or chgrp of / or a top-level system directory",
    ),
    (
        Builtin::Shutdown,
        "shutdown",
        Alarm,
        "shutting down or rebooting the host",
    ),
    (
        Builtin::SystemctlPower,
        "systemctl_power",
        Alarm,
        "shutting down or rebooting the host through systemd",
    ),
    (
        Builtin::InitRunlevel,
        "init_runlevel",
        Alarm,
        "switching to runlevel 0 or 6",
    ),
    (
        Builtin::ScriptDestination,
        "script_destination",
        Block,
        "writing a script into / or a system directory, or onto authorized_keys or a shell start-up file",
    ),
];

/// Every program some command matcher looks at (besides `mkfs.*`): other
/// commands only matter through their output redirections.
const PROGRAMS: &[&str] = &[
    "blkdiscard",
    "chgrp",
    "chmod",
    "chown",
    "cp",
    "dd",
    "find",
    "halt",
    "init",
    "install",
    "ln",
    "mke2fs",
    "mkfs",
    "mv",
    "poweroff",
    "reboot",
    "rm",
    "rsync",
    "shred",
    "shutdown",
    "systemctl",
    "tee",
    "telinit",
    "truncate",
    "unlink",
    "wipefs",
];

/// Whether some built-in command matcher looks at program `name`.
pub(super) fn is_watched_program(name: &str) -> bool {
    PROGRAMS.contains(&name) || name.starts_with("mkfs.")
}

/// The prefix of a built-in rule's pattern.
pub(super) const PREFIX: &str = "builtin:";

/// One command as the matchers see it.
pub(super) struct Cmd<'a> {
    /// The program's file name (`rm` for `/bin/rm`), wrappers removed;
    /// empty when the command runs nothing.
    pub name: &'a str,
    /// Its arguments.
    pub args: &'a [&'a str],
    /// Output redirection targets.
    pub writes: &'a [&'a str],
}

impl Cmd<'_> {
    /// Whether no command matcher can match: an unwatched program and no
    /// output redirection.
    pub fn is_unwatched(&self) -> bool {
        self.writes.is_empty() && !is_watched_program(self.name)
    }
}

// === impl Builtin ===

impl Builtin {
    /// The matcher named `name` (after [`PREFIX`]).
    pub fn by_name(name: &str) -> Option<Self> {
        CATALOGUE.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    /// Whether `cmd` is what this rule is about.
    pub fn command(self, cmd: &Cmd<'_>) -> bool {
        if self == Builtin::OverwritePasswd && cmd.writes.iter().any(|w| is_account_file(w)) {
            return true;
        }
        if self == Builtin::WriteToDevice && cmd.writes.iter().any(|w| is_block_device(w)) {
            return true;
        }
        let (name, args) = (cmd.name, cmd.args);
        match self {
            Builtin::RmRoot => {
                name == "rm" && recursive(args, true) && operands(args).any(is_root_or_system_dir)
            }
            Builtin::Mkfs => name == "mkfs" || name == "mke2fs" || name.starts_with("mkfs."),
            Builtin::DdToDevice => name == "dd" && dd_output(args).is_some_and(is_block_device),
            Builtin::WriteToDevice => writes_onto(name, args, is_block_device),
            Builtin::WipeDevice => wipes(name, args),
            Builtin::FindDelete => name == "find" && find_deletes_everything(args),
            Builtin::OverwritePasswd => overwrites_account_file(name, args),
            Builtin::Chmod777Root => name == "chmod" && chmod_world_writable(args),
            Builtin::ChownRoot => matches!(name, "chown" | "chgrp") && chown_recursive(args),
            Builtin::Shutdown => matches!(name, "shutdown" | "reboot" | "halt" | "poweroff"),
            Builtin::SystemctlPower => name == "systemctl" && systemctl_power(args),
            Builtin::InitRunlevel => {
                matches!(name, "init" | "telinit") && matches!(args.first(), Some(&("0" | "6")))
            }
            Builtin::ForkBomb | Builtin::ScriptDestination => false,
        }
    }

    /// Whether a logical line is what this rule is about (the fork bomb,
    /// which is a function definition, not a command).
    pub fn line(self, line: &str) -> bool {
        self == Builtin::ForkBomb && is_fork_bomb(line)
    }

    /// Whether writing a script as `dir/name` is what this rule is about.
    pub fn destination(self, dir: &str, name: &str) -> bool {
        self == Builtin::ScriptDestination && is_unsafe_script_destination(dir, name)
    }
}

/// Arguments before `--` that are options.
fn options<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    args.iter()
        .take_while(|a| **a != "--")
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .copied()
}

/// Arguments that are not options (all of them after `--`).
fn operands<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    let mut after_dashes = false;
    args.iter().copied().filter(move |a| {
        if after_dashes {
            return true;
        }
        if *a == "--" {
            after_dashes = true;
            return false;
        }
        !a.starts_with('-') || *a == "-"
    })
}

/// `-R` or `--recursive`, or (`lower_r`) `-r`, alone or in a cluster.
fn recursive(args: &[&str], lower_r: bool) -> bool {
    options(args).any(|o| {
        o == "--recursive"
            || (!o.starts_with("--") && (o.contains('R') || (lower_r && o.contains('r'))))
    })
}

/// `of=` of `dd`.
fn dd_output<'a>(args: &'a [&'a str]) -> Option<&'a str> {
    args.iter().rev().find_map(|a| a.strip_prefix("of="))
}

/// The destination of `cp`/`mv`/`install`/`ln`: `-t DIR`,
/// `--target-directory=DIR`, or the last operand of two or more.
fn copy_destination<'a>(args: &'a [&'a str]) -> Option<&'a str> {
    for (i, a) in args.iter().enumerate() {
        if let Some(d) = a.strip_prefix("--target-directory=") {
            return Some(d);
        }
        if *a == "-t" || *a == "--target-directory" {
            return args.get(i + 1).copied();
        }
    }
    let ops: Vec<&str> = operands(args).collect();
    (ops.len() >= 2).then(|| ops[ops.len() - 1])
}

/// `tee FILE`, or `cp`/`mv`/`install`/`ln` onto FILE, where `target(FILE)`.
fn writes_onto(name: &str, args: &[&str], target: fn(&str) -> bool) -> bool {
    match name {
        "tee" => operands(args).any(target),
        "cp" | "mv" | "install" | "ln" | "rsync" => copy_destination(args).is_some_and(target),
        _ => false,
    }
}

/// `wipefs -a|-o`, `blkdiscard`, or `shred` of a block device.
fn wipes(name: &str, args: &[&str]) -> bool {
    match name {
        "blkdiscard" => true,
        "shred" => operands(args).any(is_block_device),
        "wipefs" => options(args).any(|o| {
            matches!(o, "--all" | "--offset")
                || o.starts_with("--offset=")
                || (!o.starts_with("--") && (o.contains('a') || o.contains('o')))
        }),
        _ => false,
    }
}

/// `find` from `/` or a system directory that deletes (`-delete`, or
/// `-exec rm`/`-exec shred`) with no name or path test to narrow it.
fn find_deletes_everything(args: &[&str]) -> bool {
    let starts = args
        .iter()
        .skip_while(|a| matches!(**a, "-H" | "-L" | "-P"))
        .take_while(|a| !a.starts_with('-') && **a != "(" && **a != "!");
    if !starts.copied().any(is_root_or_system_dir) {
        return false;
    }
    let narrowed = args.iter().any(|a| {
        matches!(
            *a,
            "-name"
                | "-iname"
                | "-path"
                | "-ipath"
                | "-wholename"
                | "-iwholename"
                | "-regex"
                | "-iregex"
        )
    });
    let deletes = args.iter().enumerate().any(|(i, a)| {
        *a == "-delete"
            || (matches!(*a, "-exec" | "-execdir" | "-ok" | "-okdir")
                && args
                    .get(i + 1)
                    .is_some_and(|p| matches!(program(p), "rm" | "shred")))
    });
    deletes && !narrowed
}

/// Writing onto, truncating, shredding, deleting or moving away an
/// account file (or copying a file named like one into `/etc`).
fn overwrites_account_file(name: &str, args: &[&str]) -> bool {
    if writes_onto(name, args, is_account_file) {
        return true;
    }
    match name {
        "dd" => dd_output(args).is_some_and(is_account_file),
        "truncate" | "shred" | "rm" | "unlink" => operands(args).any(is_account_file),
        // Moving an account file away deletes it; copying a file named
        // like one into /etc overwrites it.
        "cp" | "mv" | "install" | "rsync" => {
            let into_etc = copy_destination(args).is_some_and(is_etc);
            let mut sources = operands(args).filter(|s| !is_etc(s));
            sources.any(|s| {
                (into_etc && is_account_name(program(s))) || (name == "mv" && is_account_file(s))
            })
        }
        _ => false,
    }
}

/// `chmod -R|--recursive MODE PATH…` with a mode that lets others write,
/// onto `/` or a system directory.
fn chmod_world_writable(args: &[&str]) -> bool {
    // chmod's own options; anything else starting with `-` is a mode (`-w`).
    let is_option = |a: &str| {
        a.starts_with("--") || (a.len() > 1 && a[1..].bytes().all(|b| b"cfvR".contains(&b)))
    };
    let mut mode = None;
    let mut recursive = false;
    let mut paths = Vec::new();
    for a in args {
        if is_option(a) {
            recursive |= *a == "--recursive" || (!a.starts_with("--") && a.contains('R'));
        } else if mode.is_none() {
            mode = Some(*a);
        } else {
            paths.push(*a);
        }
    }
    recursive && mode.is_some_and(world_writable) && paths.into_iter().any(is_root_or_system_dir)
}

/// Whether a chmod mode gives others write: octal with `w` in the last
/// digit (`777`, `0666`), or a symbolic clause for `o`, `a` or everyone
/// that adds or sets `w` (`a+w`, `o=rwx`, `+w`).
fn world_writable(mode: &str) -> bool {
    if !mode.is_empty() && mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return mode.bytes().last().is_some_and(|d| (d - b'0') & 2 != 0);
    }
    mode.split(',').any(|clause| {
        let who_end = clause.find(['+', '-', '=']).unwrap_or(clause.len());
        let who = &clause[..who_end];
        let for_others = who.is_empty() || who.contains('o') || who.contains('a');
        let adds_w = clause[who_end..]
            .split(['-'])
            .next()
            .is_some_and(|add| add.contains('w'));
        for_others && adds_w
    })
}

/// `chown -R OWNER PATH…` / `chgrp -R GROUP PATH…` onto `/` or a system
/// directory.
fn chown_recursive(args: &[&str]) -> bool {
    if !recursive(args, false) {
        return false;
    }
    let by_reference = options(args).any(|o| o.starts_with("--reference"));
    operands(args)
        .skip(usize::from(!by_reference))
        .any(is_root_or_system_dir)
}

/// `systemctl [options] reboot|poweroff|halt|kexec`.
fn systemctl_power(args: &[&str]) -> bool {
    let with_value = [
        "-H",
        "-M",
        "-t",
        "-p",
        "-s",
        "-n",
        "-o",
        "--host",
        "--machine",
    ];
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if !a.starts_with('-') {
            return matches!(*a, "reboot" | "poweroff" | "halt" | "kexec");
        }
        i += 1 + usize::from(with_value.contains(a));
    }
    false
}

/// `:(){ :|:& };:` and its renamed and respaced forms: a function whose
/// body pipes itself into itself in the background.
fn is_fork_bomb(line: &str) -> bool {
    static BOMB: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"([\w:.-]+)\s*\(\s*\)\s*\{\s*([\w:.-]+)\s*\|\s*([\w:.-]+)\s*&")
            .expect("fork bomb pattern")
    });
    BOMB.is_match(line)
        && BOMB
            .captures_iter(line)
            .any(|c| c[1] == c[2] && c[2] == c[3])
}

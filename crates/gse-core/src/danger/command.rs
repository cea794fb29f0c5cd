//! Which program a simple command runs: past variable assignments, the
//! reserved words that start a command (`then`, `do`, `!`, `{`…) and the
//! wrappers that run another command (`sudo -u x`, `timeout 5`, `nice -n
//! 10`, `env`, `nohup`, `xargs`, `busybox`…); and the strings that are
//! scripts of their own (`sh -c S`, `bash -lc S`, `eval A B`, `env -S S`,
//! `su -c S`, `find … -exec C … \;`), which the check lexes again.

/// A command as the rules see it.
#[derive(Debug, Default)]
pub(super) struct Unwrapped<'w> {
    /// The program and its arguments, wrappers removed; empty when the
    /// command runs nothing (`command -v rm`, a lone assignment).
    pub argv: &'w [&'w str],
    /// Strings the command runs as shell scripts.
    pub scripts: Vec<String>,
}

/// A wrapper: which of its options take a value, and how many words
/// (besides options) come before the wrapped command.
struct Wrapper {
    name: &'static str,
    with_value: &'static [&'static str],
    positionals: usize,
}

const fn wrapper(
    name: &'static str,
    with_value: &'static [&'static str],
    positionals: usize,
) -> Wrapper {
    Wrapper {
        name,
        with_value,
        positionals,
    }
}

/// Programs that run the rest of their command line as a command.
const WRAPPERS: &[Wrapper] = &[
    wrapper(
        "sudo",
        &["-u", "-g", "-p", "-C", "-D", "-r", "-t", "-U", "-T"],
        0,
    ),
    wrapper("doas", &["-u", "-C"], 0),
    wrapper("timeout", &["-s", "-k", "--signal", "--kill-after"], 1),
    wrapper("nice", &["-n", "--adjustment"], 0),
    wrapper("ionice", &["-c", "-n", "-t", "--class", "--classdata"], 0),
    wrapper("env", &["-u", "-C", "--unset", "--chdir"], 0),
    wrapper("nohup", &[], 0),
    wrapper("exec", &["-a"], 0),
    wrapper("command", &[], 0),
    wrapper("builtin", &[], 0),
    wrapper("time", &["-f", "-o", "--format", "--output"], 0),
    wrapper("setsid", &[], 0),
    wrapper("stdbuf", &["-i", "-o", "-e"], 0),
    wrapper(
        "xargs",
        &[
            "-a",
            "-d",
            "-E",
            "-I",
            "-L",
            "-n",
            "-P",
            "-s",
            "--arg-file",
            "--delimiter",
        ],
        0,
    ),
    wrapper("busybox", &[], 0),
];

/// Words that may open a command without being its program.
const RESERVED: &[&str] = &[
    "!", "{", "}", "then", "do", "else", "elif", "if", "while", "until", "fi", "done",
];

/// Shells whose `-c` argument is a script.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash"];

/// The file name of a program path (`/usr/bin/env` is `env`).
pub(super) fn program(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// `NAME=value` (or `NAME+=value`) before a command.
fn is_assignment(word: &str) -> bool {
    let Some(eq) = word.find('=') else {
        return false;
    };
    let name = word[..eq].strip_suffix('+').unwrap_or(&word[..eq]);
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether a command starting with `first` can run something other than
/// `first` itself: a wrapper, a reserved word, an assignment, a shell,
/// `eval`, `su` or `find`. If not, its program is `first`.
pub(super) fn may_run_another(first: &str) -> bool {
    let name = program(first);
    RESERVED.contains(&first)
        || WRAPPERS.iter().any(|w| w.name == name)
        || SHELLS.contains(&name)
        || matches!(name, "eval" | "su" | "runuser" | "find")
        || is_assignment(first)
}

/// Finds the program `words` runs and the scripts it runs.
pub(super) fn unwrap<'w>(words: &'w [&'w str]) -> Unwrapped<'w> {
    let mut scripts = Vec::new();
    let mut i = 0;
    loop {
        while i < words.len() && (is_assignment(words[i]) || RESERVED.contains(&words[i])) {
            i += 1;
        }
        let Some(first) = words.get(i) else {
            break;
        };
        let name = program(first);
        let Some(w) = WRAPPERS.iter().find(|w| w.name == name) else {
            break;
        };
        match skip_wrapper(w, words, i + 1, &mut scripts) {
            Some(next) => i = next,
            None => {
                i = words.len();
                break;
            }
        }
    }
    let argv = &words[i.min(words.len())..];
    scripts.extend(inner_scripts(argv));
    Unwrapped { argv, scripts }
}

/// The index of the wrapped command after wrapper `w`'s options at `i`;
/// `None` when nothing is run (`command -v`, `env -S` whose string is
/// pushed to `scripts`).
fn skip_wrapper(
    w: &Wrapper,
    words: &[&str],
    mut i: usize,
    scripts: &mut Vec<String>,
) -> Option<usize> {
    while let Some(&word) = words.get(i) {
        if word == "--" {
            i += 1;
            break;
        }
        if !word.starts_with('-') || word == "-" {
            break;
        }
        if w.name == "command" && (word.contains('v') || word.contains('V')) {
            return None;
        }
        if w.name == "env" && (word == "-S" || word.starts_with("--split-string")) {
            let value = match word.split_once('=') {
                Some((_, v)) => Some(v),
                None => words.get(i + 1).copied(),
            };
            let rest = words.get(i + 2..).unwrap_or_default();
            let mut script = value.unwrap_or_default().to_string();
            for r in rest {
                script.push(' ');
                script.push_str(r);
            }
            scripts.push(script);
            return None;
        }
        let takes_value = w.with_value.contains(&word) && !word.contains('=');
        i += 1 + usize::from(takes_value);
    }
    if w.name == "env" || w.name == "sudo" {
        while words.get(i).is_some_and(|w| is_assignment(w)) {
            i += 1;
        }
    }
    Some(i + w.positionals)
}

/// The scripts `argv` runs: a shell's `-c` string, `eval`'s words, `su
/// -c`, and each `find -exec` command.
fn inner_scripts(argv: &[&str]) -> Vec<String> {
    let Some(first) = argv.first() else {
        return Vec::new();
    };
    let name = program(first);
    let args = &argv[1..];
    if SHELLS.contains(&name) {
        return shell_c(args).into_iter().collect();
    }
    match name {
        "eval" => vec![args.join(" ")],
        "su" | "runuser" => su_c(args).into_iter().collect(),
        "find" => find_exec(args),
        _ => Vec::new(),
    }
}

/// `sh -c S`, `bash -ec S`, `bash -o pipefail -c S`: the first word that is
/// not an option, when some option cluster holds `c`.
fn shell_c(args: &[&str]) -> Option<String> {
    let mut has_c = false;
    let mut i = 0;
    while let Some(&a) = args.get(i) {
        if a == "--" || !(a.starts_with('-') || a.starts_with('+')) || a == "-" {
            i += usize::from(a == "--");
            break;
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        has_c |= a.starts_with('-') && a.contains('c');
        // `-o option` / `+o option` take a value.
        i += 1 + usize::from(a.ends_with('o') || a.ends_with('O'));
    }
    has_c.then(|| args.get(i).map(|s| s.to_string())).flatten()
}

/// `su -c S user`, `su - user -c S`, `su --command=S`.
fn su_c(args: &[&str]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--command=") {
            return Some(v.to_string());
        }
        matches!(*a, "-c" | "--command")
            .then(|| args.get(i + 1).map(|s| s.to_string()))
            .flatten()
    })
}

/// Each `-exec`/`-execdir`/`-ok`/`-okdir` command of `find`, up to its `;`
/// or `+`.
fn find_exec(args: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if matches!(args[i], "-exec" | "-execdir" | "-ok" | "-okdir") {
            let end = args[i + 1..]
                .iter()
                .position(|a| *a == ";" || *a == "+")
                .map_or(args.len(), |p| i + 1 + p);
            out.push(args[i + 1..end].join(" "));
            i = end;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        unwrap(words).argv.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wrappers_and_reserved_words_are_looked_through() {
        for words in [
            &["sudo", "-u", "bob", "rm", "x"][..],
            &["sudo", "-E", "--", "rm", "x"],
            &["then", "timeout", "-s", "KILL", "5", "rm", "x"],
            &["nice", "-n", "10", "ionice", "-c", "3", "rm", "x"],
            &["nice", "-10", "rm", "x"],
            &["/usr/bin/env", "-i", "A=1", "B=2", "rm", "x"],
            &["FOO=1", "nohup", "/bin/rm", "x"],
            &["!", "xargs", "-0", "-n", "1", "rm", "x"],
            &["busybox", "rm", "x"],
            &["do", "exec", "-a", "name", "rm", "x"],
            &["time", "-p", "command", "rm", "x"],
        ] {
            let got = argv(words);
            assert_eq!(program(&got[0]), "rm", "{words:?}");
            assert_eq!(got[1..], ["x"], "{words:?}");
        }
        assert!(argv(&["command", "-v", "rm"]).is_empty());
        assert!(argv(&["A=1"]).is_empty());
        assert_eq!(argv(&["echo", "sudo", "rm"]), ["echo", "sudo", "rm"]);
    }

    #[test]
    fn inner_scripts_are_found() {
        let scripts = |w: &[&str]| unwrap(w).scripts;
        assert_eq!(scripts(&["sh", "-c", "rm -rf /", "arg0"]), ["rm -rf /"]);
        assert_eq!(scripts(&["bash", "-o", "pipefail", "-ec", "x"]), ["x"]);
        assert_eq!(scripts(&["sudo", "/bin/bash", "-lc", "x"]), ["x"]);
        assert!(scripts(&["bash", "script.sh", "-c"]).is_empty());
        assert_eq!(scripts(&["eval", "rm", "-rf", "/"]), ["rm -rf /"]);
        assert_eq!(scripts(&["env", "-S", "rm -rf", "/"]), ["rm -rf /"]);
        assert_eq!(scripts(&["su", "-", "root", "-c", "x"]), ["x"]);
        assert_eq!(
            scripts(&["find", "/", "-exec", "rm", "-rf", "{}", ";"]),
            ["rm -rf {}"]
        );
    }
}

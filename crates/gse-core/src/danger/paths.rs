//! What the built-in rules know about paths: which ones are the root or a
//! system directory (so deleting, chmod-ing or chown-ing them recursively
//! breaks the host), which are block devices, which are the account files,
//! and where a task must not write a script.
//!
//! Paths are compared after lexical normalisation (`//`, `.`, `..` and a
//! trailing `/` do not change what a path names), so `/etc//passwd` is
//! `/etc/passwd`. `~` and `$HOME` are the agent's home, `/root`. A
//! relative path names nothing here: the working directory is unknown.

use std::borrow::Cow;

/// Top-level directories whose loss breaks the host.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "opt", "proc", "root",
    "run", "sbin", "srv", "sys", "usr", "var",
];

/// The account files under `/etc`.
const ACCOUNT_FILES: &[&str] = &["passwd", "shadow", "group", "gshadow", "sudoers"];

/// Names under `/dev` that are block devices (disks, partitions, volumes).
const BLOCK_DEVICES: &[&str] = &[
    "sd", "hd", "vd", "xvd", "nvme", "mmcblk", "dm-", "md", "loop", "nbd", "disk/", "mapper/",
];

/// Directories (and everything below them) no script is written into.
const NO_SCRIPT_TREES: &[&str] = &[
    "bin",
    "boot",
    "dev",
    "etc",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "proc",
    "sbin",
    "sys",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib32",
    "usr/lib64",
    "usr/libx32",
    "usr/libexec",
    "usr/local/bin",
    "usr/local/sbin",
    "var/spool/cron",
];

/// File names no script is written onto, in any directory: a shell or
/// ssh would read them as root's.
const NO_SCRIPT_NAMES: &[&str] = &[
    "authorized_keys",
    "authorized_keys2",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".zlogin",
    ".cshrc",
    ".tcshrc",
    ".login",
];

/// `path` with `~` and `$HOME` replaced by `/root`; `None` if relative.
fn absolute(path: &str) -> Option<Cow<'_, str>> {
    for home in ["~", "$HOME", "${HOME}"] {
        if let Some(rest) = path.strip_prefix(home)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Some(Cow::Owned(format!("/root{rest}")));
        }
    }
    path.starts_with('/').then_some(Cow::Borrowed(path))
}

/// The components of an absolute path, normalised; `None` if relative.
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whether glob `pattern` (`*`, `?`, `[…]`) can match `text`. A bracket
/// expression is taken as any one character: it may only say "yes" more
/// often. Linear backtracking on the last `*`, so no pattern is slow.
fn glob_matches(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Star,
        One,
        Byte(u8),
    }
    let mut toks = Vec::with_capacity(pattern.len());
    let p = pattern.as_bytes();
    let mut i = 0;
    while i < p.len() {
        toks.push(match p[i] {
            b'*' => Tok::Star,
            b'?' => Tok::One,
            b'[' if p[i + 1..].contains(&b']') => {
                i += p[i + 1..].iter().position(|&b| b == b']').unwrap_or(0) + 1;
                Tok::One
            }
            b => Tok::Byte(b),
        });
        i += 1;
    }
    let t = text.as_bytes();
    let (mut ti, mut pi, mut star): (usize, usize, Option<(usize, usize)>) = (0, 0, None);
    while ti < t.len() {
        match toks.get(pi) {
            Some(Tok::Star) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Tok::One) => (ti, pi) = (ti + 1, pi + 1),
            Some(Tok::Byte(b)) if *b == t[ti] => (ti, pi) = (ti + 1, pi + 1),
            _ => match star {
                Some((sp, st)) => {
                    (pi, ti) = (sp + 1, st + 1);
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[pi..].iter().all(|t| *t == Tok::Star)
}

/// Whether a top-level name (maybe a glob) can name a system directory.
fn may_be_system_dir(name: &str) -> bool {
    SYSTEM_DIRS.iter().any(|d| glob_matches(name, d))
}

/// `/`, a top-level system directory, or everything in one of them
/// (`/*`, `/etc/*`, `/u*`, `~`, `/usr/./`).
pub(super) fn is_root_or_system_dir(path: &str) -> bool {
    let Some(abs) = absolute(path) else {
        return false;
    };
    let Some(c) = components(&abs) else {
        return false;
    };
    let all = |s: &str| !s.is_empty() && s.bytes().all(|b| b == b'*');
    match c.as_slice() {
        [] => true,
        [top] => may_be_system_dir(top),
        [top, rest] => may_be_system_dir(top) && all(rest),
        _ => false,
    }
}

/// A disk, partition or volume under `/dev`.
pub(super) fn is_block_device(path: &str) -> bool {
    let Some(c) = components(path) else {
        return false;
    };
    let Some((&"dev", rest)) = c.split_first() else {
        return false;
    };
    let rest = rest.join("/");
    BLOCK_DEVICES.iter().any(|d| rest.starts_with(d))
}

/// `/etc/passwd`, `/etc/shadow`, `/etc/group`, `/etc/gshadow`,
/// `/etc/sudoers`.
pub(super) fn is_account_file(path: &str) -> bool {
    matches!(components(path).as_deref(), Some(["etc", f]) if ACCOUNT_FILES.contains(f))
}

/// `/etc` itself (so that `cp x/passwd /etc/` lands on an account file).
pub(super) fn is_etc(path: &str) -> bool {
    components(path).as_deref() == Some(&["etc"])
}

/// Whether `name` is one of the account files' names.
pub(super) fn is_account_name(name: &str) -> bool {
    ACCOUNT_FILES.contains(&name)
}

/// Whether a script must not be written as `dir/name`: into `/` or a
/// system directory, into an `.ssh` directory, onto a shell start-up file
/// or `authorized_keys`, or (Windows) under `X:\Windows`.
pub(super) fn is_unsafe_script_destination(dir: &str, name: &str) -> bool {
    if NO_SCRIPT_NAMES.contains(&name) {
        return true;
    }
    let b = dir.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        let rest = dir[2..].replace('\\', "/").to_ascii_lowercase();
        let c = components(&rest).unwrap_or_default();
        return c.first() == Some(&"windows");
    }
    let Some(c) = components(dir) else {
        return false;
    };
    let joined = c.join("/");
    c.is_empty()
        || c.contains(&".ssh")
        || NO_SCRIPT_TREES
            .iter()
            .any(|t| joined == *t || joined.strip_prefix(t).is_some_and(|r| r.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_system_dirs_in_every_spelling() {
        for p in [
            "/", "//", "/.", "/*", "/etc", "/etc/", "/usr//", "/var/*", "/u*", "/[e]tc", "/tmp/..",
            "~", "~/", "$HOME", "/root/*", "/e?c/**",
        ] {
            assert!(is_root_or_system_dir(p), "{p}");
        }
        for p in [
            "/tmp",
            "/tmp/*",
            "/usr/local/app",
            "/etc/nginx",
            "/backup*",
            "build",
            "*",
            "~/x",
            "/etc/*/x",
        ] {
            assert!(!is_root_or_system_dir(p), "{p}");
        }
    }

    #[test]
    fn devices_and_account_files() {
        for p in [
            "/dev/sda",
            "/dev//sdb1",
            "/dev/nvme0n1",
            "/dev/mapper/vg-root",
            "/dev/disk/by-id/x",
        ] {
            assert!(is_block_device(p), "{p}");
        }
        for p in ["/dev/null", "/dev/shm/x", "/dev/stdout", "/tmp/sda", "sda"] {
            assert!(!is_block_device(p), "{p}");
        }
        assert!(is_account_file("/etc//passwd"));
        assert!(is_account_file("/etc/./shadow"));
        assert!(!is_account_file("/tmp/etc/passwd"));
        assert!(!is_account_file("/etc/passwd-"));
    }

    #[test]
    fn script_destinations() {
        for (d, n) in [
            ("/etc", "passwd"),
            ("/etc//", "x.sh"),
            ("/", "x.sh"),
            ("/usr/bin", "x"),
            ("/usr/local/sbin/", "x"),
            ("/root/.ssh", "x"),
            ("/tmp/bkjob/root", ".bashrc"),
            ("/home/a", "authorized_keys"),
            ("C:\\Windows\\System32", "x.bat"),
            ("c:/windows", "x.bat"),
        ] {
            assert!(is_unsafe_script_destination(d, n), "{d} {n}");
        }
        for (d, n) in [
            ("/tmp/bkjob/root", "bk_gse_script_1.sh"),
            ("/usr/local/gse/scripts", "x.sh"),
            ("/etcetera", "x"),
            ("/var/tmp", "passwd"),
            ("C:\\gse\\script", "x.bat"),
        ] {
            assert!(!is_unsafe_script_destination(d, n), "{d} {n}");
        }
    }

    #[test]
    fn globs_never_backtrack_badly() {
        assert!(glob_matches("*", "etc"));
        assert!(glob_matches("e*c", "etc"));
        assert!(!glob_matches("e*x", "etc"));
        assert!(!may_be_system_dir(&format!("{}x", "*a".repeat(50_000))));
    }
}

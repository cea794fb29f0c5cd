//! What callers ask of the file role, once the API layer has parsed it, and
//! the rules those checks apply (bounds, names, permissions, how a source
//! spec becomes a selection).
//!
//! The API layer owns the wire shapes and names the offending field; the
//! rules live here so that every entry point applies the same ones.

use gse_core::AgentRef;
use gse_proto::link::SelectionKind;

/// Longest zone name, bytes.
pub const MAX_ZONE_BYTES: usize = 64;
/// Most hops of a zone chain (F8).
pub const MAX_HOPS: usize = 16;
/// Most relays in one hop.
pub const MAX_RELAYS_PER_HOP: usize = 100;
/// Most pass-through pairs one transfer asks for (F9).
pub const MAX_PASS_THROUGH: usize = 16;
/// Most entries (one upload per task plus one download per target) in one
/// transfer; they are all kept in memory and saved together.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest speed cap, MB/s (about a terabyte a second: "no cap" in practice).
pub const MAX_SPEED_MB: u64 = 1 << 20;
/// Bytes per MB of the API's `upload_speed`/`download_speed` (MiB, as GSE's
/// agents count them).
pub const BYTES_PER_MB: u64 = 1024 * 1024;
/// Mode of a pushed file (`async_push_file`) unless the caller gives one.
pub const DEFAULT_PUSH_MODE: u32 = 0o644;
/// Longest file name or pattern, bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// A transfer to start (`async_transfer_file`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferSpec {
    pub tasks: Vec<FileTaskSpec>,
    /// 0 = the configured default.
    pub timeout_seconds: u64,
    pub auto_mkdir: bool,
    /// MB/s, 0 = unlimited.
    pub upload_speed: u64,
    pub download_speed: u64,
    /// Ordered hops of a zone chain (F8).
    pub zone_chain: Vec<ZoneHop>,
    /// Pass-throughs asked for (F9); allowed only by the server config.
    pub pass_through: Vec<ZonePair>,
}

/// An agent as the caller named it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// `bk_agent_id` exactly as sent.
    pub bk_agent_id: String,
    pub agent: AgentRef,
    /// Empty for the host itself.
    pub bk_container_id: String,
    /// The execution account; for a target it is the default owner.
    pub user: String,
}

/// One source file spec and where it goes (the API's `tasks[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct FileTaskSpec {
    pub source: SourceSpec,
    pub target: TargetDirSpec,
    pub targets: Vec<AgentSpec>,
}

/// Job's `FileTaskTypeEnum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Regex = 3,
    Wildcard = 4,
}

/// Where the bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceFrom {
    /// An agent's files (`async_transfer_file`).
    Agent(AgentSpec),
    /// The bytes given in the request (`async_push_file`): this node is
    /// the source of one regular file.
    Content(bytes::Bytes),
}

/// What to send, as the caller named it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    pub from: SourceFrom,
    /// `store_dir` and `file_name` exactly as sent (echoed in results).
    pub store_dir: String,
    pub file_name: String,
    pub kind: FileKind,
}

/// Where and how targets install what they get.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetDirSpec {
    pub store_dir: String,
    /// "" = the source's name.
    pub file_name: String,
    /// "" = each target agent's `user` (or the agent's own user).
    pub owner: String,
    /// Mode bits; 0 = keep the source's.
    pub permission: u32,
}

/// One hop of a zone chain: relays that carry the files into `zone`.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneHop {
    pub zone: String,
    pub relays: Vec<AgentSpec>,
}

/// A pass-through asked for: targets in `to_zone` fetch from `from_zone`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonePair {
    pub from_zone: String,
    pub to_zone: String,
}

/// A target or source named in a poll or a terminate.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentName {
    pub bk_agent_id: String,
    pub bk_container_id: String,
}

// === impl FileKind ===

impl FileKind {
    /// Job's numbers (1 file, 2 dir, 3 regex, 4 wildcard).
    pub fn from_job(n: u64) -> Option<FileKind> {
        match n {
            1 => Some(FileKind::File),
            2 => Some(FileKind::Dir),
            3 => Some(FileKind::Regex),
            4 => Some(FileKind::Wildcard),
            _ => None,
        }
    }

    /// The kind when the caller names none: an empty name is a directory,
    /// a name with glob characters a wildcard, anything else one file.
    pub fn infer(file_name: &str) -> FileKind {
        if file_name.is_empty() {
            FileKind::Dir
        } else if has_glob(file_name) {
            FileKind::Wildcard
        } else {
            FileKind::File
        }
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

// === impl SourceSpec ===

/// What the source agent is asked for: `FileManifestRequest`'s fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub kind: SelectionKind,
    pub source_dir: String,
    pub pattern: String,
}

impl SourceSpec {
    /// The source agent, unless the bytes come with the request.
    pub fn agent(&self) -> Option<&AgentSpec> {
        match &self.from {
            SourceFrom::Agent(a) => Some(a),
            SourceFrom::Content(_) => None,
        }
    }

    /// The selection the source builds its manifest from. A directory is
    /// `store_dir` (joined with `file_name` when one is given); a wildcard
    /// whose directory part holds glob characters (`/data/*/logs/` +
    /// `a.log`) starts at the last plain directory and globs the rest.
    pub fn selection(&self) -> Selection {
        let dir = &self.store_dir;
        match self.kind {
            FileKind::File => Selection {
                kind: SelectionKind::SelectionFile,
                source_dir: dir.clone(),
                pattern: self.file_name.clone(),
            },
            FileKind::Dir => Selection {
                kind: SelectionKind::SelectionTree,
                source_dir: join(dir, &self.file_name),
                pattern: String::new(),
            },
            FileKind::Regex => Selection {
                kind: SelectionKind::SelectionRegex,
                source_dir: dir.clone(),
                pattern: self.file_name.clone(),
            },
            FileKind::Wildcard => {
                let (plain, globbed) = split_glob_dir(dir);
                let pattern = if globbed.is_empty() {
                    self.file_name.clone()
                } else {
                    format!("{globbed}/{}", self.file_name)
                };
                Selection {
                    kind: SelectionKind::SelectionWildcard,
                    source_dir: plain,
                    pattern,
                }
            }
        }
    }
}

/// `dir` and `name` joined with one separator (`name` may be empty).
fn join(dir: &str, name: &str) -> String {
    if name.is_empty() {
        return dir.to_string();
    }
    let sep = if dir.contains('\\') && !dir.contains('/') {
        '\\'
    } else {
        '/'
    };
    let base = dir.trim_end_matches(['/', '\\']);
    format!("{base}{sep}{name}")
}

/// Splits a directory at its first component with glob characters:
/// (`/data`, `*/logs`) for `/data/*/logs/`; (`dir`, "") when there is none.
fn split_glob_dir(dir: &str) -> (String, String) {
    let parts: Vec<&str> = dir.split('/').collect();
    let Some(first) = parts.iter().position(|p| has_glob(p)) else {
        return (dir.to_string(), String::new());
    };
    let plain = parts[..first].join("/");
    let plain = if plain.is_empty() {
        "/".to_string()
    } else {
        plain
    };
    let rest: Vec<&str> = parts[first..]
        .iter()
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    (plain, rest.join("/"))
}

// === rules ===

/// Whether `name` is a plain file name (no directory part).
pub fn check_plain_name(name: &str) -> Result<(), &'static str> {
    if name == "." || name == ".." {
        return Err("must be a file name, not `.` or `..`");
    }
    if name.contains(['/', '\\', '\0']) {
        return Err("must be a plain file name, without `/`, `\\` or NUL");
    }
    if name.len() > 255 {
        return Err("is too long (at most 255 bytes)");
    }
    Ok(())
}

/// Whether `pattern` (a regex or a glob) can be sent to an agent.
pub fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("is empty; a regex or wildcard task needs a pattern in file_name");
    }
    if pattern.contains('\0') {
        return Err("must not contain a NUL character");
    }
    if pattern.len() > MAX_NAME_BYTES {
        return Err("is too long (at most 1024 bytes)");
    }
    Ok(())
}

/// Whether `owner` is `user` or `user:group` with portable names.
pub fn check_owner(owner: &str) -> Result<(), &'static str> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let ok = match owner.split_once(':') {
        Some((user, group)) => name_ok(user) && name_ok(group),
        None => name_ok(owner),
    };
    if ok {
        Ok(())
    } else {
        Err(
            "is not an owner: use `user` or `user:group` (letters, digits, `_`, `.`, `-`; at most 32 each)",
        )
    }
}

/// Permission bits from chmod-style octal digits ("755", "0644", "0o600").
pub fn parse_permission(digits: &str) -> Result<u32, String> {
    let s = digits.strip_prefix("0o").unwrap_or(digits);
    let bad = || {
        format!(
            "{digits:?} is not a file mode: write it as octal digits like 755 or \"0644\" (at most 7777)"
        )
    };
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(s, 8).map_err(|_| bad())?;
    if mode > 0o7777 {
        return Err(bad());
    }
    Ok(mode)
}

/// Whether `zone` is a zone name ("" is the default zone).
pub fn check_zone(zone: &str) -> Result<(), &'static str> {
    if zone.len() > MAX_ZONE_BYTES {
        return Err("is too long (at most 64 bytes)");
    }
    if zone.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &str, name: &str, kind: FileKind) -> SourceSpec {
        SourceSpec {
            from: SourceFrom::Agent(AgentSpec {
                bk_agent_id: "0:10.0.0.1".into(),
                agent: AgentRef::parse("0:10.0.0.1").unwrap(),
                bk_container_id: String::new(),
                user: String::new(),
            }),
            store_dir: dir.into(),
            file_name: name.into(),
            kind,
        }
    }

    #[test]
    fn kinds_are_inferred_like_job_names_them() {
        assert_eq!(FileKind::infer(""), FileKind::Dir);
        assert_eq!(FileKind::infer("a.tar.gz"), FileKind::File);
        assert_eq!(FileKind::infer("*.log"), FileKind::Wildcard);
        assert_eq!(FileKind::infer("app-[0-9].log"), FileKind::Wildcard);
        assert_eq!(FileKind::from_job(3), Some(FileKind::Regex));
        assert_eq!(FileKind::from_job(5), None);
    }

    #[test]
    fn selections() {
        let s = source("/data/", "a.txt", FileKind::File).selection();
        assert_eq!(
            (s.kind, s.source_dir.as_str(), s.pattern.as_str()),
            (SelectionKind::SelectionFile, "/data/", "a.txt")
        );
        let s = source("/data/pkg", "", FileKind::Dir).selection();
        assert_eq!(
            (s.kind, s.source_dir.as_str()),
            (SelectionKind::SelectionTree, "/data/pkg")
        );
        let s = source("/data/", "pkg", FileKind::Dir).selection();
        assert_eq!(s.source_dir, "/data/pkg");
        let s = source("/data/*/logs/", "*.log", FileKind::Wildcard).selection();
        assert_eq!(
            (s.source_dir.as_str(), s.pattern.as_str()),
            ("/data", "*/logs/*.log")
        );
        let s = source("/data/logs/", "*.log", FileKind::Wildcard).selection();
        assert_eq!(
            (s.source_dir.as_str(), s.pattern.as_str()),
            ("/data/logs/", "*.log")
        );
        let s = source("/*/", "x", FileKind::Wildcard).selection();
        assert_eq!((s.source_dir.as_str(), s.pattern.as_str()), ("/", "*/x"));
    }

    #[test]
    fn permissions_are_chmod_digits() {
        assert_eq!(parse_permission("755"), Ok(0o755));
        assert_eq!(parse_permission("0644"), Ok(0o644));
        assert_eq!(parse_permission("0o600"), Ok(0o600));
        assert_eq!(parse_permission("7777"), Ok(0o7777));
        for bad in ["", "8", "rwx", "17777", "-1", "0x1ff", "777777"] {
            assert!(parse_permission(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_owners_and_zones() {
        assert!(check_plain_name("a.txt").is_ok());
        assert!(check_plain_name("../a").is_err());
        assert!(check_plain_name("..").is_err());
        assert!(check_owner("root").is_ok());
        assert!(check_owner("www-data:www-data").is_ok());
        assert!(check_owner("a b").is_err());
        assert!(check_owner("a:").is_err());
        assert!(check_owner("-rf").is_err());
        assert!(check_zone("").is_ok());
        assert!(check_zone(&"z".repeat(65)).is_err());
        assert!(check_pattern("").is_err());
    }
}

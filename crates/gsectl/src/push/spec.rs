//! What `--from`, `--to`, `--zone-chain` and `--pass-through` say, parsed
//! into typed values, and the `async_transfer_file` body built from them.
//!
//! An endpoint is `AGENTS:PATH`: the path starts at the first `:` that is
//! followed by `/` (or by a Windows drive, `C:\`), so agent ids keep their
//! own colons (`0:10.0.0.1`). A bare IPv4 address means cloud 0. Every
//! problem names the flag and the value, and says what was expected.

use std::fmt;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Job's `FileTaskTypeEnum`, the API's `source.file_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    File = 1,
    Dir = 2,
    Regex = 3,
    Wildcard = 4,
}

/// The parsed `--from`: one agent and what to send from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub agent: String,
    /// `source.store_dir`: the file's directory, or the directory sent or
    /// searched.
    pub dir: String,
    /// `source.file_name`: the file's name, the pattern, or "" for a tree.
    pub name: String,
    pub selection: Selection,
}

/// One parsed `--to`: agents and the directory to put the files in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub agents: Vec<String>,
    pub dir: String,
}

/// One parsed `--zone-chain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneHop {
    pub zone: String,
    pub relays: Vec<String>,
}

/// One parsed `--pass-through`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassThrough {
    pub from_zone: String,
    pub to_zone: String,
}

/// A flag's value that cannot be used, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct SpecError {
    pub flag: &'static str,
    pub value: String,
    pub why: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.flag, self.value, self.why)
    }
}

impl std::error::Error for SpecError {}

fn refuse(flag: &'static str, value: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Splits `AGENTS:PATH` at the first `:` that starts an absolute path.
pub fn split_endpoint<'a>(
    flag: &'static str,
    value: &'a str,
) -> Result<(&'a str, &'a str), SpecError> {
    let at = value
        .char_indices()
        .filter(|&(_, c)| c == ':')
        .map(|(i, _)| i)
        .find(|&i| is_absolute(&value[i + 1..]));
    match at {
        Some(0) => Err(refuse(
            flag,
            value,
            "no agent before the path; write AGENT:/path, e.g. 0:10.0.0.1:/data/app.tgz",
        )),
        Some(i) => Ok((&value[..i], &value[i + 1..])),
        None => Err(refuse(
            flag,
            value,
            "expected AGENT:/absolute/path (e.g. 0:10.0.0.1:/data/app.tgz); the path must start with / (or a drive, C:\\)",
        )),
    }
}

fn is_absolute(path: &str) -> bool {
    let b = path.as_bytes();
    b.first() == Some(&b'/')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/'))
}

/// Checks one agent id: `cloud:ipv4`, a bare IPv4 (cloud 0), or a real
/// agent id (letters, digits, `-`, `_`, `.`, no `:`). Returns the id to send.
pub fn agent_id(flag: &'static str, raw: &str) -> Result<String, SpecError> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(refuse(flag, raw, "an agent id is empty (a stray comma?)"));
    }
    if id.parse::<Ipv4Addr>().is_ok() {
        return Ok(format!("0:{id}"));
    }
    match id.split_once(':') {
        Some((cloud, ip)) => {
            if cloud.parse::<u32>().is_err() || ip.parse::<Ipv4Addr>().is_err() {
                return Err(refuse(
                    flag,
                    raw,
                    "an id with ':' must be cloud_id:ipv4, e.g. 0:10.0.0.1",
                ));
            }
            Ok(id.to_string())
        }
        None if id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Ok(id.to_string())
        }
        None => Err(refuse(
            flag,
            raw,
            "not an agent id: give cloud_id:ip (0:10.0.0.1), an IPv4 address or a bk_agent_id",
        )),
    }
}

fn agent_list(flag: &'static str, list: &str) -> Result<Vec<String>, SpecError> {
    list.split(',').map(|a| agent_id(flag, a)).collect()
}

/// Parses `--from`. A trailing `/` or `dir` sends the directory; a
/// `pattern` selects files under the directory instead.
pub fn source(
    value: &str,
    dir: bool,
    pattern: Option<(Selection, &str)>,
) -> Result<Source, SpecError> {
    const FLAG: &str = "--from";
    let (agents, path) = split_endpoint(FLAG, value)?;
    let agents = agent_list(FLAG, agents)?;
    let [agent] = <[String; 1]>::try_from(agents)
        .map_err(|_| refuse(FLAG, value, "--from takes exactly one agent"))?;
    let trimmed = trim_dir(path);
    if let Some((selection, pattern)) = pattern {
        if pattern.is_empty() {
            return Err(refuse(
                FLAG,
                value,
                "the --wildcard/--regex pattern is empty",
            ));
        }
        return Ok(Source {
            agent,
            dir: trimmed,
            name: pattern.into(),
            selection,
        });
    }
    if dir || path.ends_with('/') || path.ends_with('\\') {
        return Ok(Source {
            agent,
            dir: trimmed,
            name: String::new(),
            selection: Selection::Dir,
        });
    }
    let cut = path
        .rfind(['/', '\\'])
        .expect("an absolute path has a separator");
    let (parent, name) = (&path[..cut], &path[cut + 1..]);
    Ok(Source {
        agent,
        dir: if parent.is_empty() {
            "/".into()
        } else {
            parent.into()
        },
        name: name.into(),
        selection: Selection::File,
    })
}

/// A directory without its trailing separators (but "/" stays "/").
fn trim_dir(path: &str) -> String {
    let t = path.trim_end_matches(['/', '\\']);
    if t.is_empty() || t.ends_with(':') {
        format!("{t}/")
    } else {
        t.to_string()
    }
}

/// Parses one `--to AGENT[,AGENT..]:/dir`.
pub fn target(value: &str) -> Result<Target, SpecError> {
    const FLAG: &str = "--to";
    let (agents, path) = split_endpoint(FLAG, value)?;
    Ok(Target {
        agents: agent_list(FLAG, agents)?,
        dir: trim_dir(path),
    })
}

/// Parses one `--zone-chain ZONE=RELAY[,RELAY..]`.
pub fn zone_hop(value: &str) -> Result<ZoneHop, SpecError> {
    const FLAG: &str = "--zone-chain";
    let (zone, relays) = value.split_once('=').ok_or_else(|| {
        refuse(
            FLAG,
            value,
            "expected ZONE=RELAY[,RELAY..], e.g. dc2=0:10.2.0.1",
        )
    })?;
    if zone.trim().is_empty() {
        return Err(refuse(FLAG, value, "the zone name is empty"));
    }
    Ok(ZoneHop {
        zone: zone.trim().into(),
        relays: agent_list(FLAG, relays)?,
    })
}

/// Parses one `--pass-through FROM:TO` (zone names).
pub fn pass_through(value: &str) -> Result<PassThrough, SpecError> {
    const FLAG: &str = "--pass-through";
    match value.split_once(':') {
        Some((from, to))
            if !from.trim().is_empty() && !to.trim().is_empty() && !to.contains(':') =>
        {
            Ok(PassThrough {
                from_zone: from.trim().into(),
                to_zone: to.trim().into(),
            })
        }
        _ => Err(refuse(
            FLAG,
            value,
            "expected FROM_ZONE:TO_ZONE, e.g. dc1:dc2",
        )),
    }
}

/// Parses `--permission` as octal digits (644, 0755); the API carries the
/// digits as written, as bk-job sends them.
pub fn permission(value: &str) -> Result<u32, SpecError> {
    const FLAG: &str = "--permission";
    let digits = value.trim();
    let ok = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(refuse(
            FLAG,
            value,
            "expected octal mode digits, e.g. 644 or 0755",
        ));
    }
    Ok(digits.parse().expect("checked digits"))
}

/// Everything `async_transfer_file` needs, parsed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub source: Source,
    pub targets: Vec<Target>,
    /// Rename the file on the targets (single-file sends only).
    pub name: Option<String>,
    pub owner: Option<String>,
    pub permission: Option<u32>,
    pub auto_mkdir: bool,
    pub upload_mb: u32,
    pub download_mb: u32,
    pub timeout_s: u32,
    pub zone_chain: Vec<ZoneHop>,
    pub pass_through: Vec<PassThrough>,
}

impl Plan {
    /// Download entries to expect: one per (target agent, task).
    pub fn expected_downloads(&self) -> usize {
        self.targets.iter().map(|t| t.agents.len()).sum()
    }

    /// The request body: one task per `--to`, all from the same source.
    pub fn request(&self) -> Value {
        let s = &self.source;
        let tasks: Vec<Value> = self.targets.iter().map(|t| self.task(s, t)).collect();
        let mut body = json!({
            "tasks": tasks,
            "timeout_seconds": self.timeout_s,
            "auto_mkdir": self.auto_mkdir,
            "upload_speed": self.upload_mb,
            "download_speed": self.download_mb,
        });
        if !self.zone_chain.is_empty() {
            body["zone_chain"] = self
                .zone_chain
                .iter()
                .map(|h| json!({"zone": h.zone, "relays": agents_json(&h.relays)}))
                .collect();
        }
        if !self.pass_through.is_empty() {
            body["pass_through"] = self
                .pass_through
                .iter()
                .map(|p| json!({"from_zone": p.from_zone, "to_zone": p.to_zone}))
                .collect();
        }
        body
    }

    fn task(&self, s: &Source, t: &Target) -> Value {
        let name = match (&self.name, s.selection) {
            (Some(name), _) => name.clone(),
            (None, Selection::File) => s.name.clone(),
            (None, _) => String::new(),
        };
        let mut target =
            json!({"file_name": name, "store_dir": t.dir, "agents": agents_json(&t.agents)});
        if let Some(owner) = &self.owner {
            target["owner"] = json!(owner);
        }
        if let Some(permission) = self.permission {
            target["permission"] = json!(permission);
        }
        json!({
            "source": {"file_name": s.name, "store_dir": s.dir, "agent": {"bk_agent_id": s.agent},
                       "file_type": s.selection as u8},
            "target": target,
        })
    }
}

fn agents_json(agents: &[String]) -> Value {
    agents.iter().map(|a| json!({"bk_agent_id": a})).collect()
}

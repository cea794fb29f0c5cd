//! The entries of `get_transfer_file_result`, kept across polls, and the
//! final text: targets grouped by outcome (like `exec`), targets that fell
//! back to direct grouped by the reason they gave, total time, and how the
//! bytes came (P2P or direct).
//!
//! An entry is keyed as bk-job keys it: upload entries by (source agent,
//! source path), download entries by that plus (target agent, target path).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agents::human_bytes;

/// `error_code` of an entry that finished well.
pub const ERR_NONE: i64 = 0;
/// `error_code` of an entry still running.
pub const ERR_RUNNING: i64 = 115;
/// `error_code` of an entry stopped by `async_terminate_transfer_file`.
pub const ERR_TERMINATED: i64 = 126;

/// `content.mode` of a target's entry.
pub const MODE_DOWNLOAD: i64 = 1;

/// One entry's `content`; fields the server leaves out read as empty.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Content {
    pub mode: i64,
    pub source_agent_id: String,
    pub source_file_dir: String,
    pub source_file_name: String,
    pub dest_agent_id: String,
    pub dest_file_dir: String,
    pub dest_file_name: String,
    pub progress: u32,
    /// KB/s.
    pub speed: u64,
    pub size: u64,
    pub status: i64,
    pub status_info: String,
    /// Unix ms.
    pub start_time: u64,
    pub end_time: u64,
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
    /// Why the target's pieces went direct instead of P2P; "" = they did not.
    pub p2p_fallback: String,
}

/// One result entry as the API gives it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Entry {
    pub error_code: i64,
    pub error_msg: String,
    pub content: Content,
}

// === impl Entry ===

impl Entry {
    pub fn is_download(&self) -> bool {
        self.content.mode == MODE_DOWNLOAD
    }

    pub fn is_final(&self) -> bool {
        self.error_code != ERR_RUNNING
    }

    pub fn succeeded(&self) -> bool {
        self.error_code == ERR_NONE
    }

    /// What a target's line says, e.g. "OK" or "failed (705 source missing): ...".
    pub fn outcome(&self) -> String {
        match self.error_code {
            ERR_NONE => "OK".into(),
            ERR_RUNNING => "still running".into(),
            ERR_TERMINATED => "terminated (126)".into(),
            code => {
                let name = code_name(code).map(|n| format!(" {n}")).unwrap_or_default();
                let msg = if self.error_msg.is_empty() {
                    &self.content.status_info
                } else {
                    &self.error_msg
                };
                format!("failed ({code}{name}): {msg}")
            }
        }
    }

    /// The key bk-job keys the entry by (see the module header).
    pub fn key(&self) -> String {
        let c = &self.content;
        let source = format!(
            "{}:{}",
            c.source_agent_id,
            join(&c.source_file_dir, &c.source_file_name)
        );
        if self.is_download() {
            format!(
                "1:{source}:{}:{}",
                c.dest_agent_id,
                join(&c.dest_file_dir, &c.dest_file_name)
            )
        } else {
            format!("0:{source}")
        }
    }

    /// How a target is named in the output: its agent, plus the path when
    /// one agent gets several files.
    pub fn target_label(&self, with_path: bool) -> String {
        let c = &self.content;
        if with_path {
            format!(
                "{}:{}",
                c.dest_agent_id,
                join(&c.dest_file_dir, &c.dest_file_name)
            )
        } else {
            c.dest_agent_id.clone()
        }
    }
}

/// A short name for the file transfer's error codes (COMPAT.md §2.1).
pub fn code_name(code: i64) -> Option<&'static str> {
    Some(match code {
        117 => "agent down",
        119 => "too large",
        120 => "timeout",
        126 => "terminated",
        701 => "transfer failed",
        702 => "verification failed",
        703 => "unsafe path",
        704 => "cannot write",
        705 => "source missing",
        706 => "source unreadable",
        707 => "zone refused",
        708 => "bad selection",
        709 => "source changed",
        710 => "install failed",
        _ => return None,
    })
}

fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (_, true) => dir.to_string(),
        (true, false) => name.to_string(),
        (false, false) if dir.ends_with(['/', '\\']) => format!("{dir}{name}"),
        (false, false) => format!("{dir}/{name}"),
    }
}

/// The task's entries as last seen, by key.
#[derive(Debug, Default)]
pub struct Entries {
    by_key: BTreeMap<String, Entry>,
}

// === impl Entries ===

impl Entries {
    /// Takes in one poll's `data.result`; returns how many entries it held.
    pub fn update(&mut self, result: &Value) -> usize {
        let list: Vec<Entry> = result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        let n = list.len();
        for entry in list {
            self.by_key.insert(entry.key(), entry);
        }
        n
    }

    pub fn downloads(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_key.iter().filter(|(_, e)| e.is_download())
    }

    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.by_key.values()
    }

    /// True once `expected` downloads are known and every one is final.
    pub fn downloads_done(&self, expected: usize) -> bool {
        let mut n = 0;
        for (_, e) in self.downloads() {
            if !e.is_final() {
                return false;
            }
            n += 1;
        }
        n >= expected
    }

    /// Exit status: every expected download ended with 0.
    pub fn all_succeeded(&self, expected: usize) -> bool {
        let ok = self.downloads().filter(|(_, e)| e.succeeded()).count();
        ok >= expected && self.downloads().all(|(_, e)| e.succeeded())
    }

    /// Bytes the targets got from peers and direct, over download entries.
    pub fn byte_split(&self) -> ByteSplit {
        self.downloads()
            .fold(ByteSplit::default(), |acc, (_, e)| ByteSplit {
                p2p: acc.p2p + e.content.bytes_p2p,
                direct: acc.direct + e.content.bytes_direct,
            })
    }

    /// Target agents that got more than one download entry (their lines
    /// then carry the path).
    fn repeated_agents(&self) -> BTreeMap<&str, usize> {
        let mut seen = BTreeMap::new();
        for (_, e) in self.downloads() {
            *seen.entry(e.content.dest_agent_id.as_str()).or_insert(0) += 1;
        }
        seen
    }

    /// Targets grouped by outcome, largest group first, then the summary.
    pub fn render(&self, expected: usize, elapsed: Duration) -> String {
        let repeated = self.repeated_agents();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, e) in self.downloads() {
            let with_path = repeated[e.content.dest_agent_id.as_str()] > 1;
            groups
                .entry(e.outcome())
                .or_default()
                .push(e.target_label(with_path));
        }
        let mut ordered: Vec<_> = groups.into_iter().collect();
        ordered
            .sort_by_key(|(outcome, targets)| (std::cmp::Reverse(targets.len()), outcome.clone()));
        let mut out = String::new();
        for (outcome, targets) in ordered {
            let noun = if targets.len() == 1 {
                "target"
            } else {
                "targets"
            };
            out.push_str(&format!(
                "=== {} {noun} ({}): {outcome}\n",
                targets.len(),
                targets.join(", ")
            ));
        }
        for e in self
            .all()
            .filter(|e| !e.is_download() && e.is_final() && !e.succeeded())
        {
            let c = &e.content;
            out.push_str(&format!(
                "=== source {}:{}: {}\n",
                c.source_agent_id,
                join(&c.source_file_dir, &c.source_file_name),
                e.outcome()
            ));
        }
        out.push_str(&self.render_fallbacks(&repeated));
        let seen = self.downloads().count();
        if seen < expected {
            out.push_str(&format!(
                "=== {} target(s) never reported a result\n",
                expected - seen
            ));
        }
        out.push_str(&self.summary(elapsed));
        out
    }

    /// Targets that fell back to direct, grouped by their reason.
    fn render_fallbacks(&self, repeated: &BTreeMap<&str, usize>) -> String {
        let mut by_reason: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (_, e) in self.downloads() {
            if !e.content.p2p_fallback.is_empty() {
                let with_path = repeated[e.content.dest_agent_id.as_str()] > 1;
                by_reason
                    .entry(&e.content.p2p_fallback)
                    .or_default()
                    .push(e.target_label(with_path));
            }
        }
        let mut out = String::new();
        for (reason, targets) in by_reason {
            let noun = if targets.len() == 1 {
                "target"
            } else {
                "targets"
            };
            out.push_str(&format!(
                "=== {} {noun} ({}) fell back to direct through the server: {reason}\n",
                targets.len(),
                targets.join(", ")
            ));
        }
        out
    }

    fn summary(&self, elapsed: Duration) -> String {
        let ok = self.downloads().filter(|(_, e)| e.succeeded()).count();
        let size: u64 = self
            .downloads()
            .filter(|(_, e)| e.succeeded())
            .map(|(_, e)| e.content.size)
            .sum();
        let split = self.byte_split();
        format!(
            "{ok} of {} targets OK, {} delivered in {:.1}s; {}\n",
            self.downloads().count(),
            human_bytes(size),
            elapsed.as_secs_f64(),
            split.describe()
        )
    }
}

/// How the targets' bytes came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByteSplit {
    pub p2p: u64,
    pub direct: u64,
}

impl ByteSplit {
    /// Share of the bytes that came from peers, 0..=1 (0 when none came).
    pub fn p2p_share(&self) -> f64 {
        let total = self.p2p + self.direct;
        if total == 0 {
            0.0
        } else {
            self.p2p as f64 / total as f64
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "from peers (P2P) {} ({:.1}%), direct {} ({:.1}%)",
            human_bytes(self.p2p),
            100.0 * self.p2p_share(),
            human_bytes(self.direct),
            if self.p2p + self.direct == 0 {
                0.0
            } else {
                100.0 * (1.0 - self.p2p_share())
            }
        )
    }
}

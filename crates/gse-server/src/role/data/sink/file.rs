//! The file sink (`report_mode: file`): one JSON-lines file per route,
//! `<dir>/<channel_id>_<route name>.jsonl`, one line per record:
//!
//! ```text
//! {"dataid":1001,"agent":"0:10.0.0.1","seq":7,"time_ms":1700000000000,"data":"<payload>","peer_uid":0,"peer_pid":4242}
//! ```
//!
//! `data` is the payload as a JSON string; a payload that is not UTF-8 is
//! written as `"data_base64"` instead. `peer_uid`/`peer_pid` name the local
//! user and process that wrote the record to the agent's socket; they come
//! last and only when known (not for the agent's own records, nor from
//! older agents), so the fields before them are as they always were. `dir` is `stream_to.data_log_path`:
//! a relative path resolves under `node.data_dir`; an absolute one must lie
//! inside `node.data_dir` (an API caller must not pick arbitrary files on
//! the server). A batch is one `write(2)` in append mode, done on the
//! blocking pool: once `write_batch` returns the lines are in the OS and
//! survive a SIGKILL of the server; with `"fdatasync": true` in the
//! stream_to (our extension) they are also flushed to disk first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use gse_core::seams::{Batch, Sink, SinkError};
use parking_lot::Mutex;

use super::SinkContext;
use crate::role::data::routes::model::{Route, StreamTo};

/// Writes a route's records as JSON lines; see the module doc.
pub struct FileSink {
    name: String,
    path: PathBuf,
    fdatasync: bool,
    /// Opened at the first batch (and again after a failed write), so a
    /// directory that appears later is picked up without a route change.
    file: Arc<Mutex<Option<File>>>,
}

/// Where `data_log_path` points, or why it is refused (see the module doc).
pub fn resolve_dir(data_dir: &Path, data_log_path: &str) -> Result<PathBuf, String> {
    let path = Path::new(data_log_path);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "data_log_path {data_log_path:?} contains \"..\"; give a path without it"
        ));
    }
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if path.is_relative() {
        return Ok(data_dir.join(path));
    }
    if path.starts_with(&data_dir) {
        return Ok(path.to_path_buf());
    }
    Err(format!(
        "data_log_path {data_log_path:?} is outside node.data_dir {}; give a path relative to \
         node.data_dir, or an absolute path inside it",
        data_dir.display()
    ))
}

/// The file name of a route: its channel and name, with every character
/// that is not `[A-Za-z0-9._-]` replaced by `_`.
pub fn file_name(channel_id: u32, route_name: &str) -> String {
    let clean: String = route_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{channel_id}_{clean}.jsonl")
}

// === impl FileSink ===

impl FileSink {
    pub fn new(
        ctx: &SinkContext,
        stream_to: &StreamTo,
        channel_id: u32,
        route: &Route,
    ) -> Result<Self, String> {
        let dir_text = stream_to
            .body
            .get("data_log_path")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let dir = resolve_dir(&ctx.data_dir, dir_text)?;
        let fdatasync = stream_to
            .body
            .get("fdatasync")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(FileSink {
            name: stream_to.name.clone(),
            path: dir.join(file_name(channel_id, &route.name)),
            fdatasync,
            file: Arc::new(Mutex::new(None)),
        })
    }

    /// The file this sink appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends `buf` with one write, opening the file if needed.
fn append(
    slot: &Mutex<Option<File>>,
    path: &Path,
    buf: &[u8],
    fdatasync: bool,
) -> std::io::Result<()> {
    let mut slot = slot.lock();
    if slot.is_none() {
        *slot = Some(open(path)?);
    }
    let file = slot.as_mut().expect("opened above");
    let written = file
        .write_all(buf)
        .and_then(|()| if fdatasync { file.sync_data() } else { Ok(()) });
    if written.is_err() {
        // Reopen next time: the file may have been removed or rotated.
        *slot = None;
    }
    written
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let buf = encode_batch(batch);
        let (slot, path, sync) = (self.file.clone(), self.path.clone(), self.fdatasync);
        let result = tokio::task::spawn_blocking(move || append(&slot, &path, &buf, sync))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        result.map_err(|e| SinkError::Store {
            sink: self.name.clone(),
            records: batch.records.len(),
            message: format!(
                "cannot append to {}: {e}; check that the directory is writable and the disk has room",
                self.path.display()
            ),
        })
    }
}

// === encoding ===

/// What each byte needs in a JSON string: 0 = itself, b'u' = \u00XX,
/// anything else = a backslash and that byte.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Bytes checked at once for anything to escape.
const SCAN: usize = 32;

/// Appends `s` as the inside of a JSON string. Written by hand because it
/// is the file sink's hottest loop: serde_json's `format_escaped_str` took
/// 23% of the DataServer's CPU in `gse-bench data`, this about a third of
/// that. Blocks of [`SCAN`] bytes with nothing to escape (checked without
/// branches, so the compiler vectorises it) are copied whole; other bytes
/// go through the [`ESCAPE`] table. `s` must be UTF-8 (bytes >= 0x80 pass
/// through).
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if i + SCAN <= s.len() {
            let block = &s[i..i + SCAN];
            let special = block.iter().fold(false, |acc, &b| {
                acc | (b < 0x20) | (b == b'"') | (b == b'\\')
            });
            if !special {
                i += SCAN;
                continue;
            }
        }
        let end = (i + SCAN).min(s.len());
        while i < end {
            let b = s[i];
            let e = ESCAPE[b as usize];
            if e != 0 {
                out.extend_from_slice(&s[start..i]);
                if e == b'u' {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 0xf) as usize]);
                } else {
                    out.push(b'\\');
                    out.push(e);
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&s[start..]);
}

/// The batch as JSON lines (see the module doc), in one buffer.
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    let payload: usize = batch.records.iter().map(|r| r.payload.len()).sum();
    let mut out = Vec::with_capacity(payload + payload / 8 + batch.records.len() * 96);
    // The part every line shares: `,"agent":"..","seq":N,"time_ms":`.
    let mut middle = Vec::with_capacity(64);
    let mut out_b64 = String::new();
    middle.extend_from_slice(b",\"agent\":\"");
    push_escaped(&mut middle, batch.source.as_bytes());
    let _ = write!(middle, "\",\"seq\":{},\"time_ms\":", batch.seq);
    for r in &batch.records {
        let _ = write!(out, "{{\"dataid\":{}", r.data_id);
        out.extend_from_slice(&middle);
        let _ = write!(out, "{}", r.received_ms);
        match std::str::from_utf8(&r.payload) {
            Ok(text) => {
                out.extend_from_slice(b",\"data\":\"");
                push_escaped(&mut out, text.as_bytes());
                out.push(b'"');
            }
            Err(_) => {
                out.extend_from_slice(b",\"data_base64\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(&r.payload, &mut out_b64);
                out.extend_from_slice(out_b64.as_bytes());
                out_b64.clear();
                out.push(b'"');
            }
        }
        if let Some(uid) = r.peer_uid {
            let _ = write!(out, ",\"peer_uid\":{uid}");
        }
        if let Some(pid) = r.peer_pid {
            let _ = write!(out, ",\"peer_pid\":{pid}");
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gse_core::seams::Record;
    use serde_json::{Value, json};

    use super::*;

    fn batch(payloads: &[&[u8]]) -> Batch {
        Batch {
            source: Arc::from("0:10.0.0.1"),
            seq: 42,
            records: payloads
                .iter()
                .enumerate()
                .map(|(i, p)| Record {
                    data_id: 1001,
                    received_ms: 1_700_000_000_000 + i as u64,
                    payload: Bytes::copy_from_slice(p),
                    ..Record::default()
                })
                .collect(),
        }
    }

    #[test]
    fn long_payloads_escape_across_scan_blocks() {
        // Specials before, inside, across and after 32-byte blocks.
        let mut text = String::new();
        for i in 0..300 {
            text.push(match i % 37 {
                0 => '"',
                5 => '\\',
                11 => '\n',
                17 => '\u{1}',
                23 => 'é',
                _ => 'a',
            });
        }
        for payload in [
            text.as_str(),
            &text[..64],
            &text[1..33],
            "a".repeat(96).as_str(),
        ] {
            let b = batch(&[payload.as_bytes()]);
            let line = String::from_utf8(encode_batch(&b)).unwrap();
            let v: Value = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(v["data"], json!(payload));
        }
    }

    #[test]
    fn lines_parse_back_to_the_payloads() {
        let nasty = "{\"a\":\"q\\\"x\"}\n\t\u{1}\u{7f}é漢\u{1F600}";
        let b = batch(&[nasty.as_bytes(), b"", b"plain"]);
        let text = String::from_utf8(encode_batch(&b)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            json!({"dataid":1001,"agent":"0:10.0.0.1","seq":42,"time_ms":1_700_000_000_000u64,"data":nasty})
        );
        assert_eq!(lines[1]["data"], "");
        assert_eq!(lines[2]["time_ms"], 1_700_000_000_002u64);
    }

    #[test]
    fn the_sender_comes_last_and_only_when_known() {
        let mut b = batch(&[b"a", b"b"]);
        b.records[0].peer_uid = Some(65534);
        b.records[0].peer_pid = Some(321);
        let text = String::from_utf8(encode_batch(&b)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"dataid":1001,"agent":"0:10.0.0.1","seq":42,"time_ms":1700000000000,"data":"a","peer_uid":65534,"peer_pid":321}"#
        );
        assert_eq!(
            lines[1],
            r#"{"dataid":1001,"agent":"0:10.0.0.1","seq":42,"time_ms":1700000000001,"data":"b"}"#
        );
    }

    #[test]
    fn non_utf8_payloads_are_base64() {
        let b = batch(&[&[0xff, 0x00, 0x10], &[0xfe], &[0xc3, 0x28, 1, 2]]);
        let text = String::from_utf8(encode_batch(&b)).unwrap();
        let got: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["data_base64"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(got, vec!["/wAQ", "/g==", "wygBAg=="]);
    }

    #[test]
    fn paths_stay_inside_the_data_dir() {
        let dir = Path::new("/var/lib/gse");
        assert_eq!(resolve_dir(dir, "logs/x").unwrap(), dir.join("logs/x"));
        assert_eq!(
            resolve_dir(dir, "/var/lib/gse/abs").unwrap(),
            PathBuf::from("/var/lib/gse/abs")
        );
        assert!(resolve_dir(dir, "../etc").unwrap_err().contains(".."));
        assert!(resolve_dir(dir, "a/../../b").is_err());
        assert!(resolve_dir(dir, "/etc").unwrap_err().contains("outside"));
        assert!(resolve_dir(dir, "/var/lib/gsex").is_err());
        assert_eq!(file_name(7, "a/b c.d"), "7_a_b_c.d.jsonl");
    }

    #[tokio::test]
    async fn batches_append_and_survive_a_removed_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/1001_r.jsonl");
        let sink = FileSink {
            name: "f".into(),
            path: path.clone(),
            fdatasync: true,
            file: Arc::new(Mutex::new(None)),
        };
        sink.write_batch(&batch(&[b"a", b"b"])).await.unwrap();
        sink.write_batch(&batch(&[b"c"])).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        // A directory where the file should be: the write fails, clearly.
        let blocked = FileSink {
            name: "f".into(),
            path: tmp.path().join("sub"),
            fdatasync: false,
            file: Arc::new(Mutex::new(None)),
        };
        let err = blocked.write_batch(&batch(&[b"x"])).await.unwrap_err();
        assert!(err.to_string().contains("cannot append"), "{err}");
    }
}

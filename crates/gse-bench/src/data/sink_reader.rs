//! Reads the file sink as it grows and checks it: every line of the
//! route's JSON-lines file (`role/data/sink/file.rs` in gse-server) carries
//! one record's payload as `"data":"<12-digit index><filler>"`. Each index
//! is marked in a bitmap, so the run knows when every record arrived, how
//! many came twice (at-least-once delivery), and that none is missing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::collector::index_of;

/// Bytes read per poll at most.
const READ_CHUNK: usize = 8 << 20;
/// Where a line's payload starts.
const DATA_KEY: &[u8] = b"\"data\":\"";

/// Follows one sink file.
pub struct SinkReader {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    /// Bytes read but not yet ended by a newline.
    partial: Vec<u8>,
    seen: Vec<u64>,
    expected: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub lines: u64,
}

impl SinkReader {
    pub fn new(path: PathBuf, expected: u64) -> Self {
        SinkReader {
            path,
            file: None,
            offset: 0,
            partial: Vec::new(),
            seen: vec![0; expected.div_ceil(64) as usize],
            expected,
            unique: 0,
            duplicates: 0,
            lines: 0,
        }
    }

    pub fn complete(&self) -> bool {
        self.unique == self.expected
    }

    /// Reads what was appended since the last call; returns the bytes read.
    pub fn poll(&mut self) -> Result<usize> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => {
                    return Err(e).with_context(|| format!("opening {}", self.path.display()));
                }
            }
        }
        let file = self.file.as_mut().expect("opened above");
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0; READ_CHUNK];
        let n = file.read(&mut buf)?;
        self.offset += n as u64;
        let mut chunk = std::mem::take(&mut self.partial);
        chunk.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = memchr(b'\n', &chunk[start..]) {
            self.line(&chunk[start..start + end])?;
            start += end + 1;
        }
        self.partial = chunk[start..].to_vec();
        Ok(n)
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        self.lines += 1;
        let at = find(line, DATA_KEY).with_context(|| {
            format!(
                "a sink line has no \"data\" string: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            )
        })?;
        let index = index_of(&line[at + DATA_KEY.len()..])
            .context("a sink line's payload does not start with a record index")?;
        if index >= self.expected {
            bail!(
                "the sink holds record {index}, but only {} were sent",
                self.expected
            );
        }
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
        } else {
            self.seen[word] |= bit;
            self.unique += 1;
        }
        Ok(())
    }

    /// The first few indexes never seen, for a failure message.
    pub fn missing(&self, max: usize) -> Vec<u64> {
        (0..self.expected)
            .filter(|i| self.seen[(i / 64) as usize] & (1 << (i % 64)) == 0)
            .take(max)
            .collect()
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_polls_are_counted_once_and_duplicates_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let line = |i: u64| {
            format!(
                "{{\"dataid\":1,\"agent\":\"0:127.0.0.1\",\"seq\":1,\"time_ms\":1,\"data\":\"{i:012}xx\"}}\n"
            )
        };
        let mut reader = SinkReader::new(path.clone(), 3);
        assert_eq!(reader.poll().unwrap(), 0);
        let all = format!("{}{}{}", line(0), line(2), line(0));
        std::fs::write(&path, &all[..30]).unwrap();
        reader.poll().unwrap();
        assert_eq!(reader.lines, 0);
        std::fs::write(&path, &all).unwrap();
        reader.poll().unwrap();
        assert_eq!((reader.lines, reader.unique, reader.duplicates), (3, 2, 1));
        assert_eq!(reader.missing(5), vec![1]);
        assert!(!reader.complete());
    }
}

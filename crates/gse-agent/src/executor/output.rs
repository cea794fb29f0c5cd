//! Turning a process's raw pipe bytes into bounded, valid UTF-8 output (T8).
//!
//! [`Utf8Sanitizer`] replaces invalid byte sequences with U+FFFD but holds an
//! incomplete multi-byte sequence at the end of a read until the next read,
//! so a character split across two reads survives. [`OutputSink`] charges
//! the sanitized text against the task's byte limit, cuts on a character
//! boundary, sends the truncation marker once, and keeps accepting (and
//! dropping) text so the pipes are always drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use gse_core::seams::executor::truncation_marker;
use tokio::sync::mpsc;

/// The UTF-8 replacement for bytes that are not text.
const REPLACEMENT: char = '\u{FFFD}';

/// Per-pipe UTF-8 repair with carry-over of a split character.
#[derive(Debug, Default)]
pub struct Utf8Sanitizer {
    /// The start of a character cut off by the end of the previous read
    /// (at most 3 bytes).
    pending: Vec<u8>,
}

impl Utf8Sanitizer {
    /// Appends `input` to `out` as valid UTF-8, keeping an incomplete
    /// trailing sequence for the next call.
    pub fn push(&mut self, input: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            self.decode(input, out);
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(input);
            self.decode(&joined, out);
        }
    }

    /// The stream ended: a still-incomplete character becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(REPLACEMENT);
        }
    }

    fn decode(&mut self, mut rest: &[u8], out: &mut String) {
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid_up_to` guarantees this prefix is valid UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(REPLACEMENT);
                            rest = &after[bad..];
                        }
                        None => {
                            // Only the end of the input is missing.
                            self.pending = after.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }
}

// === OutputSink ===

/// Sends sanitized text downstream within a byte budget.
pub struct OutputSink {
    out: mpsc::Sender<Bytes>,
    limit: usize,
    left: usize,
    /// Set once the limit was hit; shared so the outcome can report it even
    /// if the pump is aborted.
    truncated: Arc<AtomicBool>,
    /// The receiver went away; keep draining, stop sending.
    closed: bool,
}

impl OutputSink {
    pub fn new(out: mpsc::Sender<Bytes>, limit: usize, truncated: Arc<AtomicBool>) -> Self {
        OutputSink {
            out,
            limit,
            left: limit,
            truncated,
            closed: false,
        }
    }

    /// Sends what of `text` fits in the budget, then the marker the first
    /// time something does not fit.
    pub async fn write(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        if self.truncated.load(Ordering::Relaxed) {
            return;
        }
        if text.len() <= self.left {
            self.left -= text.len();
            self.send(text.into_bytes()).await;
            return;
        }
        let mut keep = self.left;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        self.left = 0;
        self.truncated.store(true, Ordering::Relaxed);
        let mut kept = text.into_bytes();
        kept.truncate(keep);
        self.send(kept).await;
        self.send(truncation_marker(self.limit).into_bytes()).await;
    }

    async fn send(&mut self, data: Vec<u8>) {
        if self.closed || data.is_empty() {
            return;
        }
        if self.out.send(Bytes::from(data)).await.is_err() {
            self.closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitize(chunks: &[&[u8]]) -> String {
        let mut s = Utf8Sanitizer::default();
        let mut out = String::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn valid_text_passes_through() {
        assert_eq!(sanitize(&[b"hello ", "wörld".as_bytes()]), "hello wörld");
    }

    #[test]
    fn split_characters_are_joined() {
        let text = "中文 ok 😀";
        let bytes = text.as_bytes();
        // Cut at every position, including inside both multi-byte chars.
        for cut in 0..=bytes.len() {
            assert_eq!(sanitize(&[&bytes[..cut], &bytes[cut..]]), text, "cut {cut}");
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(sanitize(&singles), text);
    }

    #[test]
    fn binary_bytes_become_replacement_chars() {
        assert_eq!(
            sanitize(&[b"a\xffb\xc0\x80c"]),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}c"
        );
        // An unfinished character at the very end.
        assert_eq!(sanitize(&[b"x\xe4\xb8"]), "x\u{FFFD}");
        // A lead byte followed by something that is not a continuation.
        assert_eq!(sanitize(&[b"\xe4", b"A"]), "\u{FFFD}A");
    }

    #[tokio::test]
    async fn sink_cuts_on_a_char_boundary_and_marks_once() {
        let (tx, mut rx) = mpsc::channel(16);
        let flag = Arc::new(AtomicBool::new(false));
        let mut sink = OutputSink::new(tx, 5, flag.clone());
        sink.write("abcd".into()).await;
        sink.write("中x".into()).await; // 3 bytes do not fit in the 1 left
        sink.write("more".into()).await;
        drop(sink);
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
        let got = String::from_utf8(got).unwrap();
        assert_eq!(got, format!("abcd{}", truncation_marker(5)));
        assert!(flag.load(Ordering::Relaxed));
    }
}

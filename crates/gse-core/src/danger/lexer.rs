//! A tolerant shell lexer: cuts a script into simple commands the way bash
//! sees them, so the rules look at commands rather than at lines.
//!
//! It joins backslash-continued lines, removes quotes and escapes (`\rm`,
//! `"rm"` and `r''m` are all `rm`; `$'\x72m'` too), splits at `;`, `&`,
//! `|`, `(`, `)` and newlines, keeps output-redirection targets apart from
//! the words, skips comments and here-document bodies, and lexes the
//! commands inside `$(…)`, `` `…` `` and `<(…)` as commands of their own.
//! Expansions it cannot know (`$VAR`, `${…}`, the output of a substitution)
//! stay as text that names no path.
//!
//! Written by hand rather than taken from a crate: bash runs a script
//! command by command, so one unbalanced quote on line 900 does not stop
//! lines 1 to 899, and the lexer must not give up on the whole text either
//! (`shlex` and `brush-parser` return an error for all of it); `shlex` and
//! `shell-words` split words only and know no operators
//! (`shlex::split("a;rm -rf /")` is `["a;rm", "-rf", "/"]`); and the check
//! runs on every line of every script, so the lexer is one linear pass with
//! no allocation per byte. Nesting of substitutions is bounded. Quoting
//! is in [`quotes`].

use std::ops::ControlFlow;

mod quotes;

/// Deepest nesting of `$(…)` / `` `…` `` lexed as commands; deeper ones
/// stay text.
const MAX_NESTING: usize = 32;

/// One simple command: its words after quote removal, the targets of its
/// output redirections, and where it is in the lexed text.
#[derive(Debug, Default)]
pub(super) struct Command {
    buf: String,
    words: Vec<(usize, usize)>,
    writes: Vec<(usize, usize)>,
    /// Byte offsets of the command in the text given to [`lex`].
    pub start: usize,
    pub end: usize,
}

impl Command {
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map(|&(a, b)| &self.buf[a..b])
    }

    /// Targets of `>`, `>>`, `>|`, `&>`, `<>` and `>&file`.
    pub fn writes(&self) -> impl Iterator<Item = &str> {
        self.writes.iter().map(|&(a, b)| &self.buf[a..b])
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.writes.is_empty()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.words.clear();
        self.writes.clear();
    }
}

/// What the caller's sink says: go on, or stop lexing.
pub(super) type Flow = ControlFlow<()>;

/// What [`lex`] found besides commands.
pub(super) struct Lexed {
    /// Whether the sink stopped the lexing.
    pub flow: Flow,
    /// Byte ranges of quoted strings and here-document bodies that span
    /// lines: where a quote the lexer and bash disagree about could hide
    /// commands, so the check looks at those lines one by one as well.
    pub multiline: Vec<(usize, usize)>,
}

/// Calls `sink` with every simple command of `src`, in order (a command
/// inside a substitution comes before the command that contains it).
pub(super) fn lex(src: &str, sink: &mut dyn FnMut(&Command) -> Flow) -> Lexed {
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
        heredocs: Vec::new(),
        nesting: 0,
        multiline: Vec::new(),
    };
    let flow = lexer.list(Close::End, sink);
    Lexed {
        flow,
        multiline: lexer.multiline,
    }
}

/// What ends the command list being lexed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    End,
    Paren,
    Backtick,
}

/// A here-document whose body follows the current line.
struct Heredoc {
    delimiter: String,
    strip_tabs: bool,
}

struct Lexer<'s> {
    src: &'s str,
    bytes: &'s [u8],
    pos: usize,
    heredocs: Vec<Heredoc>,
    nesting: usize,
    multiline: Vec<(usize, usize)>,
}

/// Bytes that end a plain run inside a word.
const fn special_table() -> [bool; 256] {
    let mut t = [false; 256];
    let specials = b" \t\r\n;&|()<>\\'\"$`";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] = true;
        i += 1;
    }
    t
}
static SPECIAL: [bool; 256] = special_table();

// === impl Lexer ===

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    /// Spaces, tabs, carriage returns and line continuations.
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'\\') if self.peek_at(1) == Some(b'\n') => self.pos += 2,
                _ => return,
            }
        }
    }

    /// A command list up to `close` (or the end of the text).
    fn list(&mut self, close: Close, sink: &mut dyn FnMut(&Command) -> Flow) -> Flow {
        let mut cmd = Command::default();
        let mut parens = 0usize;
        loop {
            self.skip_blanks();
            if cmd.is_empty() {
                cmd.start = self.pos;
            }
            let Some(b) = self.peek() else {
                return self.flush(&mut cmd, sink);
            };
            match b {
                b'\n' => {
                    self.flush(&mut cmd, sink)?;
                    self.pos += 1;
                    self.skip_heredoc_bodies();
                }
                b'#' => self.skip_comment(),
                b'&' if self.peek_at(1) == Some(b'>') => self.redirect(&mut cmd, close, sink)?,
                b';' | b'&' | b'|' | b'(' => {
                    self.pos += 1;
                    parens += usize::from(b == b'(');
                    self.flush(&mut cmd, sink)?;
                }
                b')' => {
                    self.pos += 1;
                    self.flush(&mut cmd, sink)?;
                    if close == Close::Paren && parens == 0 {
                        return ControlFlow::Continue(());
                    }
                    parens = parens.saturating_sub(1);
                }
                b'`' if close == Close::Backtick => {
                    self.pos += 1;
                    return self.flush(&mut cmd, sink);
                }
                b'<' | b'>' => self.redirect(&mut cmd, close, sink)?,
                _ => self.word(&mut cmd, close, sink)?,
            }
        }
    }

    fn flush(&mut self, cmd: &mut Command, sink: &mut dyn FnMut(&Command) -> Flow) -> Flow {
        if cmd.is_empty() {
            return ControlFlow::Continue(());
        }
        cmd.end = self.pos;
        let flow = sink(cmd);
        cmd.clear();
        flow
    }

    fn skip_comment(&mut self) {
        self.pos = match self.src[self.pos..].find('\n') {
            Some(i) => self.pos + i,
            None => self.bytes.len(),
        };
    }

    /// Skips the bodies of the here-documents opened on the line that just
    /// ended (they are data to this lexer; the per-line pass of the check
    /// still looks at each body line).
    fn skip_heredoc_bodies(&mut self) {
        for doc in std::mem::take(&mut self.heredocs) {
            let body = self.pos;
            while self.pos < self.bytes.len() {
                let rest = &self.src[self.pos..];
                let (line, next) = match rest.find('\n') {
                    Some(i) => (&rest[..i], self.pos + i + 1),
                    None => (rest, self.bytes.len()),
                };
                self.pos = next;
                let line = line.strip_suffix('\r').unwrap_or(line);
                let line = if doc.strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == doc.delimiter {
                    break;
                }
            }
            self.multiline.push((body, self.pos));
        }
    }

    /// Notes `start..self.pos` if it spans lines.
    fn note_multiline(&mut self, start: usize) {
        if self.src[start..self.pos].contains('\n') {
            self.multiline.push((start, self.pos));
        }
    }

    /// A word of the command; a word of digits right before `<` or `>` is
    /// the redirection's file descriptor, not a word.
    fn word(
        &mut self,
        cmd: &mut Command,
        close: Close,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> Flow {
        let start = cmd.buf.len();
        let quoted = self.read_word(&mut cmd.buf, close, sink)?;
        let text = &cmd.buf[start..];
        let fd = !quoted
            && !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && matches!(self.peek(), Some(b'<' | b'>'));
        if fd {
            cmd.buf.truncate(start);
        } else if quoted || cmd.buf.len() > start {
            cmd.words.push((start, cmd.buf.len()));
        }
        ControlFlow::Continue(())
    }

    /// Reads one word into `out` with quotes and escapes removed; true if
    /// any part of it was quoted (so an empty `""` is still a word).
    fn read_word(
        &mut self,
        out: &mut String,
        close: Close,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> ControlFlow<(), bool> {
        let mut quoted = false;
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>' => {
                    break;
                }
                b'`' if close == Close::Backtick => break,
                b'\\' => self.escape(out),
                b'\'' => {
                    quoted = true;
                    self.single_quoted(out);
                }
                b'"' => {
                    quoted = true;
                    let start = self.pos;
                    self.pos += 1;
                    self.double_quoted(out, sink)?;
                    self.note_multiline(start);
                }
                b'$' => quoted |= self.dollar(out, false, sink)?,
                b'`' => {
                    self.pos += 1;
                    self.substitution(Close::Backtick, out, sink)?;
                }
                _ => self.plain_run(out),
            }
        }
        ControlFlow::Continue(quoted)
    }

    /// Bytes up to the next special one, copied as they are.
    fn plain_run(&mut self, out: &mut String) {
        let start = self.pos;
        self.pos += 1;
        while self.peek().is_some_and(|b| !SPECIAL[usize::from(b)]) {
            self.pos += 1;
        }
        out.push_str(&self.src[start..self.pos]);
    }

    /// The commands of a substitution (its opening is consumed), lexed as
    /// commands of their own; the word gets a `$()` that names no path.
    fn substitution(
        &mut self,
        close: Close,
        out: &mut String,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> Flow {
        out.push_str("$()");
        if self.nesting >= MAX_NESTING {
            return ControlFlow::Continue(());
        }
        self.nesting += 1;
        let flow = self.list(close, sink);
        self.nesting -= 1;
        flow
    }

    /// A redirection and its target; output targets are kept, here-doc
    /// delimiters remembered, process substitutions lexed as commands.
    fn redirect(
        &mut self,
        cmd: &mut Command,
        close: Close,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> Flow {
        let op = self.redirect_op();
        if op.process {
            let mut ignored = String::new();
            return self.substitution(Close::Paren, &mut ignored, sink);
        }
        self.skip_blanks();
        let start = cmd.buf.len();
        self.read_word(&mut cmd.buf, close, sink)?;
        let target = &cmd.buf[start..];
        if let Some(strip_tabs) = op.heredoc {
            self.heredocs.push(Heredoc {
                delimiter: target.to_string(),
                strip_tabs,
            });
        }
        // `>&2` and `>&-` move descriptors; `>&file` writes the file.
        let fd = op.dup && (target == "-" || target.bytes().all(|b| b.is_ascii_digit()));
        if op.writes && !fd && !target.is_empty() {
            cmd.writes.push((start, cmd.buf.len()));
        } else {
            cmd.buf.truncate(start);
        }
        ControlFlow::Continue(())
    }

    /// Reads a redirection operator (`>`, `>>`, `>|`, `&>`, `&>>`, `>&`,
    /// `<`, `<>`, `<&`, `<<`, `<<-`, `<<<`, `<(`, `>(`).
    fn redirect_op(&mut self) -> RedirectOp {
        let both = self.peek() == Some(b'&');
        self.pos += usize::from(both);
        let first = self.peek();
        self.pos += 1;
        let mut op = RedirectOp {
            writes: first == Some(b'>'),
            ..RedirectOp::default()
        };
        match (first, self.peek()) {
            (_, Some(b'(')) if !both => op.process = true,
            (Some(b'>'), Some(b'>' | b'|')) => {}
            (Some(b'>' | b'<'), Some(b'&')) => op.dup = true,
            (Some(b'<'), Some(b'>')) => op.writes = true,
            (Some(b'<'), Some(b'<')) => {
                self.pos += 1;
                match self.peek() {
                    Some(b'<') => {}
                    Some(b'-') => op.heredoc = Some(true),
                    _ => {
                        op.heredoc = Some(false);
                        return op;
                    }
                }
            }
            _ => return op,
        }
        self.pos += 1;
        op
    }
}

/// What a redirection operator does with its target.
#[derive(Default)]
struct RedirectOp {
    /// The target is a file written.
    writes: bool,
    /// `>&` / `<&`: the target may be a descriptor.
    dup: bool,
    /// A here-document; true to strip leading tabs (`<<-`).
    heredoc: Option<bool>,
    /// `<(…)` / `>(…)`: a process substitution, no target.
    process: bool,
}

#[cfg(test)]
mod tests;

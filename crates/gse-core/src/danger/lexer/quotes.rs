//! Quoting for the lexer: `\` escapes, `'…'`, `"…"`, `$'…'` (decoded),
//! `$"…"`, and the `$` forms (`$(…)` lexed as commands, `${…}` kept as
//! text).

use std::ops::ControlFlow;

use super::{Close, Command, Flow, Lexer};

// === impl Lexer (quotes) ===

impl Lexer<'_> {
    /// `\` outside quotes: a continuation is dropped, any other character
    /// is taken literally.
    pub(super) fn escape(&mut self, out: &mut String) {
        self.pos += 1;
        match self.src[self.pos..].chars().next() {
            Some('\n') => self.pos += 1,
            Some(c) => {
                out.push(c);
                self.pos += c.len_utf8();
            }
            None => {}
        }
    }

    /// `'…'`, possibly over several lines; unterminated, it takes the rest.
    pub(super) fn single_quoted(&mut self, out: &mut String) {
        let body = self.pos + 1;
        let end = self.src[body..]
            .find('\'')
            .map_or(self.bytes.len(), |i| body + i);
        out.push_str(&self.src[body..end]);
        let start = self.pos;
        self.pos = (end + 1).min(self.bytes.len());
        self.note_multiline(start);
    }

    /// The inside of `"…"` (the opening quote is consumed).
    pub(super) fn double_quoted(
        &mut self,
        out: &mut String,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> Flow {
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    self.pos += 1;
                    return ControlFlow::Continue(());
                }
                b'\\' => match self.peek_at(1) {
                    Some(b'\n') => self.pos += 2,
                    Some(c @ (b'$' | b'`' | b'"' | b'\\')) => {
                        out.push(char::from(c));
                        self.pos += 2;
                    }
                    _ => {
                        out.push('\\');
                        self.pos += 1;
                    }
                },
                b'$' => {
                    self.dollar(out, true, sink)?;
                }
                b'`' => {
                    self.pos += 1;
                    self.substitution(Close::Backtick, out, sink)?;
                }
                _ => {
                    let start = self.pos;
                    let rest = &self.bytes[start..];
                    let n = rest
                        .iter()
                        .position(|b| matches!(b, b'"' | b'\\' | b'$' | b'`'))
                        .unwrap_or(rest.len());
                    self.pos += n;
                    out.push_str(&self.src[start..self.pos]);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// `$…`: a substitution is lexed as commands, `$'…'` decoded, other
    /// expansions kept as text. True if it was a quoted form.
    pub(super) fn dollar(
        &mut self,
        out: &mut String,
        in_double: bool,
        sink: &mut dyn FnMut(&Command) -> Flow,
    ) -> ControlFlow<(), bool> {
        match self.peek_at(1) {
            Some(b'(') => {
                self.pos += 2;
                self.substitution(Close::Paren, out, sink)?;
            }
            Some(b'{') => self.braced(out),
            Some(b'\'') if !in_double => {
                self.pos += 2;
                self.ansi_c(out);
                return ControlFlow::Continue(true);
            }
            Some(b'"') if !in_double => {
                let start = self.pos;
                self.pos += 2;
                self.double_quoted(out, sink)?;
                self.note_multiline(start);
                return ControlFlow::Continue(true);
            }
            _ => {
                out.push('$');
                self.pos += 1;
            }
        }
        ControlFlow::Continue(false)
    }

    /// The inside of `$'…'` (the opening is consumed), its escapes decoded.
    fn ansi_c(&mut self, out: &mut String) {
        let start = self.pos;
        while let Some(b) = self.peek() {
            match b {
                b'\'' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    self.pos += 1;
                    self.ansi_c_escape(out);
                }
                _ => {
                    let c = self.src[self.pos..].chars().next().unwrap_or_default();
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        self.note_multiline(start);
    }

    /// One `\x` escape of `$'…'` (the backslash is consumed).
    fn ansi_c_escape(&mut self, out: &mut String) {
        let Some(b) = self.peek() else { return };
        self.pos += 1;
        let simple = match b {
            b'n' => Some('\n'),
            b't' => Some('\t'),
            b'r' => Some('\r'),
            b'a' => Some('\x07'),
            b'b' => Some('\x08'),
            b'e' | b'E' => Some('\x1b'),
            b'f' => Some('\x0c'),
            b'v' => Some('\x0b'),
            b'\\' | b'\'' | b'"' | b'?' => Some(char::from(b)),
            _ => None,
        };
        let code = match b {
            _ if simple.is_some() => None,
            b'x' => self.digits(16, 2),
            b'u' => self.digits(16, 4),
            b'U' => self.digits(16, 8),
            b'0'..=b'7' => {
                self.pos -= 1;
                self.digits(8, 3)
            }
            _ => {
                out.push('\\');
                self.pos -= 1;
                return;
            }
        };
        if let Some(c) = simple.or_else(|| code.and_then(char::from_u32)) {
            out.push(c);
        }
    }

    /// Up to `max` digits in `radix`; `None` if there are none.
    fn digits(&mut self, radix: u32, max: usize) -> Option<u32> {
        let mut value: Option<u32> = None;
        for _ in 0..max {
            let Some(d) = self.peek().and_then(|b| char::from(b).to_digit(radix)) else {
                break;
            };
            self.pos += 1;
            value = Some(value.unwrap_or(0) * radix + d);
        }
        value
    }

    /// `${…}` kept as text, up to its matching brace.
    fn braced(&mut self, out: &mut String) {
        let start = self.pos;
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push_str(&self.src[start..self.pos]);
        self.note_multiline(start);
    }
}

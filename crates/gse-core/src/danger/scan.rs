//! One check of a task: every rule over the texts given (commands and
//! script contents) and over script destinations, each rule reported once,
//! the first block ending it.
//!
//! A text is looked at three ways, so that no spelling the shell runs is
//! missed: its logical lines (continuations joined; regular-expression
//! rules and the fork bomb), its commands as the lexer cuts the whole text
//! (quotes, continuations, substitutions and `sh -c` strings seen through),
//! and the commands of each physical line lexed alone (so a quote the
//! lexer and bash disagree about cannot hide the lines after it, and
//! here-document bodies are looked at too).

use std::borrow::Cow;
use std::ops::ControlFlow;

use regex::Regex;

use super::builtin::{self, Builtin, Cmd};
use super::lexer::{self, Command, Flow};
use super::{DangerAction, DangerMatch, DangerRuleSpec, Verdict, command};

/// How deep `sh -c "sh -c '…'"` strings are followed.
const MAX_INNER_DEPTH: usize = 8;
/// Longest line kept in a match, characters.
const MAX_LINE_CHARS: usize = 200;

/// How a rule matches.
#[derive(Clone, Debug)]
pub(super) enum Matcher {
    /// Against each logical line and each command's words.
    Regex(Regex),
    Builtin(Builtin),
}

/// Where a command is, in the text a match quotes.
#[derive(Clone, Copy)]
enum Origin {
    /// The lexed text starts at this offset of the quoted text.
    At(usize),
    /// The lexed text is a string inside the command at this span.
    Inside(usize, usize),
}

/// The state of one check.
pub(super) struct Scan<'p> {
    rules: &'p [(DangerRuleSpec, Matcher)],
    has_regex: bool,
    matched: Vec<bool>,
    pub verdict: Verdict,
}

// === impl Scan ===

impl<'p> Scan<'p> {
    pub fn new(rules: &'p [(DangerRuleSpec, Matcher)]) -> Self {
        Scan {
            rules,
            has_regex: rules.iter().any(|(_, m)| matches!(m, Matcher::Regex(_))),
            matched: vec![false; rules.len()],
            verdict: Verdict::default(),
        }
    }

    /// Checks one text (a command, or a script's content).
    pub fn text(&mut self, text: &str) -> Flow {
        self.lines(text, text, Origin::At(0))?;
        let lexed = lexer::lex(text, &mut |c| self.command(c, text, Origin::At(0), 0));
        lexed.flow?;
        // Lines inside multi-line strings and here-documents, each alone.
        let mut done = 0;
        for (a, b) in lexed.multiline {
            let mut start = text[..a.max(done)]
                .rfind('\n')
                .map_or(0, |i| i + 1)
                .max(done);
            while start < b && start < text.len() {
                let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
                let line = &text[start..end];
                lexer::lex(line, &mut |c| self.command(c, text, Origin::At(start), 0)).flow?;
                start = end + 1;
            }
            done = done.max(start);
        }
        ControlFlow::Continue(())
    }

    /// Checks where a script is written.
    pub fn destination(&mut self, dir: &str, name: &str) -> Flow {
        let rules = self.rules;
        for (i, (_, m)) in rules.iter().enumerate() {
            if let Matcher::Builtin(b) = m
                && !self.matched[i]
                && b.destination(dir, name)
            {
                let sep = if dir.ends_with(['/', '\\']) { "" } else { "/" };
                self.hit(i, || format!("{dir}{sep}{name}"))?;
            }
        }
        ControlFlow::Continue(())
    }

    /// The logical lines of `src` (comments skipped) against the
    /// regular-expression rules and the line matchers.
    fn lines(&mut self, src: &str, text: &str, origin: Origin) -> Flow {
        let rules = self.rules;
        for (start, end, line) in logical_lines(src) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            for (i, (_, m)) in rules.iter().enumerate() {
                let hit = !self.matched[i]
                    && match m {
                        Matcher::Regex(re) => re.is_match(line),
                        Matcher::Builtin(b) => b.line(line),
                    };
                if hit {
                    let span = span(origin, start, end);
                    self.hit(i, || snippet(text, span))?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// One command against every rule, then the scripts it runs.
    fn command(&mut self, c: &Command, text: &str, origin: Origin, depth: usize) -> Flow {
        // Most commands of a script are none of the built-in rules'
        // business: decided without allocating.
        let first = c.words().next().unwrap_or_default();
        let plain = !self.has_regex
            && c.writes().next().is_none()
            && !command::may_run_another(first)
            && !builtin::is_watched_program(command::program(first));
        if plain {
            return ControlFlow::Continue(());
        }
        let words: Vec<&str> = c.words().collect();
        let writes: Vec<&str> = c.writes().collect();
        let unwrapped = command::unwrap(&words);
        let (name, args) = match unwrapped.argv.split_first() {
            Some((first, args)) => (command::program(first), args),
            None => ("", &[][..]),
        };
        let cmd = Cmd {
            name,
            args,
            writes: &writes,
        };
        let unwatched = cmd.is_unwatched();
        let texts = if self.has_regex {
            regex_texts(&words, unwrapped.argv, &writes)
        } else {
            Vec::new()
        };
        let span = span(origin, c.start, c.end);
        let rules = self.rules;
        for (i, (_, m)) in rules.iter().enumerate() {
            let hit = !self.matched[i]
                && match m {
                    Matcher::Builtin(b) => !unwatched && b.command(&cmd),
                    Matcher::Regex(re) => texts.iter().any(|t| re.is_match(t)),
                };
            if hit {
                self.hit(i, || snippet(text, span))?;
            }
        }
        if depth < MAX_INNER_DEPTH {
            let inside = Origin::Inside(span.0, span.1);
            for script in &unwrapped.scripts {
                self.lines(script, text, inside)?;
                lexer::lex(script, &mut |c| self.command(c, text, inside, depth + 1)).flow?;
            }
        }
        ControlFlow::Continue(())
    }

    /// Records that rule `i` matched; a block ends the check.
    fn hit(&mut self, i: usize, line: impl FnOnce() -> String) -> Flow {
        self.matched[i] = true;
        let (spec, _) = &self.rules[i];
        let m = DangerMatch {
            rule: spec.name.clone(),
            action: spec.action,
            description: spec.description.clone(),
            line: line(),
        };
        match spec.action {
            DangerAction::Block => {
                self.verdict.blocked = Some(m);
                ControlFlow::Break(())
            }
            DangerAction::Alarm => {
                self.verdict.alarms.push(m);
                ControlFlow::Continue(())
            }
        }
    }
}

/// The span of the quoted text a match at `start..end` of the lexed text
/// points at.
fn span(origin: Origin, start: usize, end: usize) -> (usize, usize) {
    match origin {
        Origin::At(base) => (base + start, base + end),
        Origin::Inside(a, b) => (a, b),
    }
}

/// What regular-expression rules see of a command: its words (and output
/// redirections as `> target`), and again without wrappers when it had
/// some (`sudo -u x rm …` is also `rm …`).
fn regex_texts(words: &[&str], argv: &[&str], writes: &[&str]) -> Vec<String> {
    let render = |ws: &[&str]| {
        let mut s = ws.join(" ");
        for w in writes {
            s.push_str(" > ");
            s.push_str(w);
        }
        s
    };
    let mut out = vec![render(words)];
    if argv.len() != words.len() && !argv.is_empty() {
        out.push(render(argv));
    }
    out
}

/// Each line of `src` with its backslash-continued lines joined: (start,
/// end, line).
fn logical_lines(src: &str) -> impl Iterator<Item = (usize, usize, Cow<'_, str>)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > src.len() {
            return None;
        }
        let line_end = |from: usize| src[from..].find('\n').map_or(src.len(), |i| from + i);
        let mut end = line_end(start);
        while end < src.len() && src[start..end].ends_with('\\') {
            end = line_end(end + 1);
        }
        let raw = &src[start..end];
        let line = if raw.contains("\\\n") {
            Cow::Owned(raw.replace("\\\n", ""))
        } else {
            Cow::Borrowed(raw)
        };
        let item = (start, end, line);
        start = end + 1;
        Some(item)
    })
}

/// The largest char boundary of `text` at or below `i`.
fn char_floor(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The source lines around `span`, continuations joined and blanks
/// collapsed, at most [`MAX_LINE_CHARS`] characters.
fn snippet(text: &str, (a, b): (usize, usize)) -> String {
    // Span ends may fall inside a multi-byte character (a command that
    // ends in CJK text): step back to a boundary before slicing.
    let a = char_floor(text, a.min(text.len()));
    let b = char_floor(text, b.saturating_sub(1).clamp(a, text.len()));
    let start = text[..a].rfind('\n').map_or(0, |i| i + 1);
    let end = text[b..].find('\n').map_or(text.len(), |i| b + i);
    let stop = char_floor(text, end.min(start + 4 * MAX_LINE_CHARS));
    let raw = text[start..stop].replace("\\\n", "");
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(MAX_LINE_CHARS).collect()
}

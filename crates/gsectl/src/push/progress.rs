//! Live progress of a push, on stderr: one bar per target (indicatif) when
//! stdout and stderr are terminals, otherwise plain lines: a summary line at
//! most every few seconds and one line per target as it ends, so a log or a
//! CI job gets a readable record rather than redraws.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::results::{Entries, Entry, code_name};
use crate::agents::human_bytes;

/// Least time between two plain summary lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Bars on a terminal, lines elsewhere.
pub enum Progress {
    Bars(Bars),
    Plain(Plain),
}

impl Progress {
    /// Chooses by whether stdout and stderr are terminals.
    pub fn new(task_id: &str) -> Self {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Progress::Bars(Bars::new())
        } else {
            Progress::Plain(Plain::new(task_id))
        }
    }

    pub fn show(&mut self, entries: &Entries, expected: usize, elapsed: Duration) {
        match self {
            Progress::Bars(b) => b.show(entries),
            Progress::Plain(p) => p.show(entries, expected, elapsed),
        }
    }

    /// Prints a note without tearing the bars.
    pub fn note(&self, text: &str) {
        match self {
            Progress::Bars(b) => {
                let _ = b.multi.println(text);
            }
            Progress::Plain(_) => eprintln!("{text}"),
        }
    }

    pub fn finish(&mut self) {
        if let Progress::Bars(b) = self {
            b.finish();
        }
    }
}

/// One bar per download entry, created as entries appear.
pub struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:<21} [{wide_bar:.cyan/blue}] {percent:>3}% {bytes:>10}/{total_bytes:<10} {msg:<12}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: BTreeMap::new(),
            style,
        }
    }

    fn show(&mut self, entries: &Entries) {
        for (key, e) in entries.downloads() {
            let bar = self.bars.entry(key.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(e.content.size.max(1)));
                bar.set_style(self.style.clone());
                bar.set_prefix(e.content.dest_agent_id.clone());
                bar
            });
            if bar.is_finished() {
                continue;
            }
            let size = e.content.size.max(1);
            bar.set_length(size);
            bar.set_position(done_bytes(e));
            if e.is_final() {
                bar.finish_with_message(short_outcome(e));
            } else {
                bar.set_message(format!("{}/s", human_bytes(e.content.speed * 1024)));
            }
        }
    }

    fn finish(&mut self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        // indicatif leaves the cursor at the end of the last bar.
        if !self.bars.is_empty() {
            eprintln!();
        }
    }
}

/// A final entry's outcome in a few characters (the grouped results at
/// the end carry the message).
fn short_outcome(e: &Entry) -> String {
    match e.error_code {
        0 => "OK".into(),
        code => match code_name(code) {
            Some(name) => format!("{code} {name}"),
            None => format!("error {code}"),
        },
    }
}

/// Bytes a download entry has, from its progress (the API gives percent).
fn done_bytes(e: &Entry) -> u64 {
    if e.succeeded() {
        e.content.size
    } else {
        e.content.size * u64::from(e.content.progress.min(100)) / 100
    }
}

/// Plain lines for pipes and logs.
pub struct Plain {
    task_id: String,
    last: Option<Instant>,
    ended: BTreeSet<String>,
}

impl Plain {
    fn new(task_id: &str) -> Self {
        Plain {
            task_id: task_id.to_string(),
            last: None,
            ended: BTreeSet::new(),
        }
    }

    fn show(&mut self, entries: &Entries, expected: usize, elapsed: Duration) {
        for (key, e) in entries.downloads() {
            if e.is_final() && self.ended.insert(key.clone()) {
                eprintln!("{}: {}", e.content.dest_agent_id, e.outcome());
            }
        }
        if self.last.is_some_and(|t| t.elapsed() < PLAIN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (mut size, mut done, mut speed_kb) = (0, 0, 0);
        for (_, e) in entries.downloads() {
            size += e.content.size;
            done += done_bytes(e);
            if !e.is_final() {
                speed_kb += e.content.speed;
            }
        }
        eprintln!(
            "{}: {} targets, {} ended, {} of {} ({}/s) ({:.1}s)",
            self.task_id,
            expected,
            self.ended.len(),
            human_bytes(done),
            human_bytes(size),
            human_bytes(speed_kb * 1024),
            elapsed.as_secs_f64()
        );
    }
}

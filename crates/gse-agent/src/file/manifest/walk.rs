//! Walking a source directory for a manifest: which paths a selection covers.
//!
//! [`Walk::run`] visits the tree with an explicit stack (no recursion, so
//! depth is not bounded by the thread's stack), `lstat`s every entry, never
//! descends into a symbolic link, and stops as soon as the entry limit is
//! passed, before anything is hashed. For patterns, the directories between
//! the source and each matched file are added afterwards, so the target
//! recreates them with their modes.

use std::collections::BTreeSet;
use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};

use globset::GlobBuilder;
use regex::Regex;

use super::{ManifestError, Selection, SourceSpec, check_rel, read_err};

/// One path the selection covers.
pub(super) struct Found {
    /// The manifest path.
    pub rel: String,
    pub abs: PathBuf,
    /// From `lstat`: a link is a link.
    pub meta: Metadata,
}

/// The result of a walk: what to send, sorted by path, and what is not.
pub(super) struct Walked {
    pub found: Vec<Found>,
    pub skipped: Vec<String>,
}

enum Matcher {
    All,
    Glob {
        glob: globset::GlobMatcher,
        top_level_only: bool,
    },
    Regex(Regex),
}

pub(super) struct Walk<'a> {
    spec: &'a SourceSpec,
    matcher: Matcher,
    /// Prepended to every manifest path (the directory's name, for a tree).
    prefix: Option<String>,
    max_entries: usize,
    max_path_bytes: usize,
    found: Vec<Found>,
    skipped: Vec<String>,
}

// === impl Walk ===

impl<'a> Walk<'a> {
    pub fn new(
        spec: &'a SourceSpec,
        max_entries: usize,
        max_path_bytes: usize,
    ) -> Result<Self, ManifestError> {
        let matcher = Matcher::new(&spec.selection)?;
        let prefix = match matcher {
            Matcher::All => Some(base_name(&spec.dir)?),
            _ => None,
        };
        Ok(Walk {
            spec,
            matcher,
            prefix,
            max_entries,
            max_path_bytes,
            found: Vec::new(),
            skipped: Vec::new(),
        })
    }

    pub fn run(mut self) -> Result<Walked, ManifestError> {
        let root_meta = self.root_meta()?;
        if let Some(prefix) = self.prefix.clone() {
            check_rel(&prefix, self.max_path_bytes)?;
            self.push(prefix, self.spec.dir.clone(), root_meta)?;
        }
        let mut stack = vec![(self.spec.dir.clone(), String::new())];
        while let Some((dir, rel_dir)) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
                let entry = entry.map_err(|e| read_err(&dir, e))?;
                let abs = entry.path();
                let name = entry
                    .file_name()
                    .into_string()
                    .map_err(|_| ManifestError::NotUtf8 { path: abs.clone() })?;
                let rel = if rel_dir.is_empty() {
                    name
                } else {
                    format!("{rel_dir}/{name}")
                };
                let meta = fs::symlink_metadata(&abs).map_err(|e| read_err(&abs, e))?;
                if meta.is_dir() && self.matcher.descends() {
                    stack.push((abs.clone(), rel.clone()));
                }
                self.visit(rel, abs, meta)?;
            }
        }
        self.finish()
    }

    /// The source directory's own metadata (following a link: the caller
    /// named it).
    fn root_meta(&self) -> Result<Metadata, ManifestError> {
        let dir = &self.spec.dir;
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(meta),
            Ok(_) => Err(ManifestError::SourceNotDir { path: dir.clone() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ManifestError::SourceMissing { path: dir.clone() })
            }
            Err(e) => Err(read_err(dir, e)),
        }
    }

    fn visit(&mut self, rel: String, abs: PathBuf, meta: Metadata) -> Result<(), ManifestError> {
        let file_type = meta.file_type();
        let sendable = file_type.is_file() || file_type.is_symlink();
        let selected = match self.matcher {
            Matcher::All => true,
            _ => !file_type.is_dir() && self.matcher.matches(&rel),
        };
        if !selected {
            return Ok(());
        }
        let rel = self.manifest_path(rel);
        check_rel(&rel, self.max_path_bytes)?;
        if file_type.is_dir() || sendable {
            self.push(rel, abs, meta)
        } else {
            self.skipped.push(rel);
            Ok(())
        }
    }

    fn push(&mut self, rel: String, abs: PathBuf, meta: Metadata) -> Result<(), ManifestError> {
        if self.found.len() >= self.max_entries {
            return Err(ManifestError::TooManyEntries {
                dir: self.spec.dir.clone(),
                limit: self.max_entries,
            });
        }
        self.found.push(Found { rel, abs, meta });
        Ok(())
    }

    fn manifest_path(&self, rel: String) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}/{rel}"),
            None => rel,
        }
    }

    fn finish(mut self) -> Result<Walked, ManifestError> {
        if !matches!(self.matcher, Matcher::All) {
            if self.found.is_empty() {
                return Err(ManifestError::NothingMatched {
                    dir: self.spec.dir.clone(),
                    selection: self.spec.selection.to_string(),
                });
            }
            self.add_ancestors()?;
        }
        self.found.sort_by(|a, b| a.rel.cmp(&b.rel));
        self.skipped.sort();
        Ok(Walked {
            found: self.found,
            skipped: self.skipped,
        })
    }

    /// Adds the directories that hold matched files (each once).
    fn add_ancestors(&mut self) -> Result<(), ManifestError> {
        let dirs: BTreeSet<String> = self
            .found
            .iter()
            .flat_map(|f| ancestors(&f.rel))
            .map(str::to_owned)
            .collect();
        for rel in dirs {
            let abs = rel.split('/').fold(self.spec.dir.clone(), |p, c| p.join(c));
            let meta = fs::symlink_metadata(&abs).map_err(|e| read_err(&abs, e))?;
            self.push(rel, abs, meta)?;
        }
        Ok(())
    }
}

/// `a/b/c` -> `a`, `a/b`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

fn base_name(dir: &Path) -> Result<String, ManifestError> {
    let name = dir
        .file_name()
        .ok_or_else(|| ManifestError::NoBaseName { dir: dir.into() })?;
    name.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ManifestError::NotUtf8 { path: dir.into() })
}

// === impl Matcher ===

impl Matcher {
    fn new(selection: &Selection) -> Result<Self, ManifestError> {
        match selection {
            Selection::Tree | Selection::File(_) => Ok(Matcher::All),
            Selection::Wildcard(pattern) => {
                let glob = GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| ManifestError::BadWildcard {
                        pattern: pattern.clone(),
                        source: Box::new(e),
                    })?
                    .compile_matcher();
                // With literal separators, a pattern without '/' or '**'
                // can only match entries directly in the source directory.
                let top_level_only = !pattern.contains('/') && !pattern.contains("**");
                Ok(Matcher::Glob {
                    glob,
                    top_level_only,
                })
            }
            Selection::Regex(pattern) => Regex::new(&format!("^(?:{pattern})$"))
                .map(Matcher::Regex)
                .map_err(|e| ManifestError::BadRegex {
                    pattern: pattern.clone(),
                    source: Box::new(e),
                }),
        }
    }

    fn matches(&self, rel: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Glob { glob, .. } => glob.is_match(rel),
            Matcher::Regex(re) => re.is_match(rel),
        }
    }

    fn descends(&self) -> bool {
        !matches!(
            self,
            Matcher::Glob {
                top_level_only: true,
                ..
            }
        )
    }
}

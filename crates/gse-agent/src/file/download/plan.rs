//! What a FileStart asks of this agent, checked before anything is touched.
//!
//! [`Plan::build`] converts the manifest (code 702 for a corrupt entry),
//! applies `target_name`, resolves every path under the target directory
//! (or the relay's cache directory) with `target_path::resolve` (703 for
//! any path that would escape it), looks up the owner (710), and opens the
//! target directory as the writes will (703 for a link or directory a
//! local user planted, 704 when missing without auto_mkdir). Only then
//! does the download create anything. It also sorts entries into what is
//! fetched how: directories, small files (direct, whole), large files
//! (pieces over P2P), links.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gse_proto::link::{FileRole, FileStart};

use crate::file::codes::{self, Failure};
use crate::file::install::{self, InstallOptions, Owner};
use crate::file::manifest::{EntryKind, ManifestEntry};
use crate::file::target_path::{TargetPath, resolve};
use crate::file::wire::entry_from_wire;

/// Largest file fetched whole through the node, whatever `direct_limit`
/// says: a larger "direct" file is fetched piece by piece (still direct),
/// so memory stays bounded.
pub const SMALL_FILE_MAX: u64 = 1 << 20;

/// A checked FileStart.
#[derive(Debug)]
pub struct Plan {
    /// Where entries go: the target directory, or the relay's cache.
    pub root: PathBuf,
    pub relay: bool,
    pub opts: InstallOptions,
    pub entries: Arc<Vec<ManifestEntry>>,
    /// Resolved path of each entry (same index).
    pub targets: Arc<Vec<TargetPath>>,
    /// Files of at most this size are fetched direct (F2).
    pub direct_limit: u64,
}

// === impl Plan ===

impl Plan {
    /// Blocking: `lstat`s the target tree and asks NSS for the owner.
    pub fn build(start: &FileStart, cache_dir: &Path) -> Result<Plan, Failure> {
        let relay = start.role() == FileRole::RoleRelay;
        let mut entries = start
            .entries
            .iter()
            .map(entry_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        if !start.target_name.is_empty()
            && let [only] = entries.as_mut_slice()
            && matches!(only.kind, EntryKind::File(_))
        {
            only.path = start.target_name.clone();
        }
        let root = if relay {
            relay_root(cache_dir, &start.transfer_id, start.task_index)?
        } else {
            PathBuf::from(&start.target_dir)
        };
        let targets = entries
            .iter()
            .map(|e| resolve(&root, &e.path))
            .collect::<Result<Vec<_>, _>>()?;
        let opts = install_options(start, relay)?;
        if !relay {
            // A missing or unsafe target directory is known before anything
            // is fetched: say so at once.
            install::check_target_dir(&root, &opts)?;
        }
        Ok(Plan {
            opts,
            root,
            relay,
            entries: Arc::new(entries),
            targets: Arc::new(targets),
            direct_limit: start.direct_limit,
        })
    }

    /// Indexes of entries of one kind, in manifest order.
    fn indexes(&self, pick: impl Fn(&ManifestEntry) -> bool) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| pick(&self.entries[i]))
            .collect()
    }

    pub fn dirs(&self) -> Vec<usize> {
        self.indexes(|e| matches!(e.kind, EntryKind::Dir))
    }

    pub fn links(&self) -> Vec<usize> {
        self.indexes(|e| matches!(e.kind, EntryKind::Symlink { .. }))
    }

    /// Files fetched whole through the node.
    pub fn small_files(&self) -> Vec<usize> {
        let limit = self.direct_limit.min(SMALL_FILE_MAX);
        self.indexes(|e| matches!(e.kind, EntryKind::File(_)) && e.size() <= limit)
    }

    /// Files fetched in pieces; the flag is whether the node asked for
    /// them direct (pieces then go direct too).
    pub fn large_files(&self) -> Vec<(usize, bool)> {
        let limit = self.direct_limit.min(SMALL_FILE_MAX);
        self.indexes(|e| matches!(e.kind, EntryKind::File(_)) && e.size() > limit)
            .into_iter()
            .map(|i| (i, self.entries[i].size() <= self.direct_limit))
            .collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(ManifestEntry::size).sum()
    }

    pub fn files_total(&self) -> u32 {
        self.indexes(|e| matches!(e.kind, EntryKind::File(_))).len() as u32
    }
}

fn install_options(start: &FileStart, relay: bool) -> Result<InstallOptions, Failure> {
    if relay {
        // The cache is ours: default modes, our user, directories made.
        return Ok(InstallOptions {
            permission: None,
            owner: None,
            auto_mkdir: true,
        });
    }
    let owner = match start.owner.as_str() {
        "" => None,
        spec => Some(Owner::resolve(spec)?),
    };
    Ok(InstallOptions {
        permission: (start.permission != 0).then_some(start.permission & 0o7777),
        owner,
        auto_mkdir: start.auto_mkdir,
    })
}

/// `<cache_dir>/<transfer_id>/<task_index>`, created; the transfer id is
/// made into one safe path component.
fn relay_root(cache_dir: &Path, transfer_id: &str, task_index: u32) -> Result<PathBuf, Failure> {
    let mut name: String = transfer_id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' | ':' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    let root = cache_dir.join(name).join(task_index.to_string());
    std::fs::create_dir_all(&root).map_err(|e| {
        Failure::new(
            codes::WRITE,
            format!("cannot create the relay cache {root:?}: {e}; check [file] cache_dir"),
        )
    })?;
    Ok(root)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use gse_proto::link::{EntryType, FileEntry};

    fn entry(path: &str, kind: EntryType) -> FileEntry {
        let mut e = FileEntry {
            path: path.into(),
            mode: 0o755,
            ..FileEntry::default()
        };
        e.set_type(kind);
        e
    }

    #[test]
    fn f10_escaping_paths_fail_with_703_before_anything_is_made() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("t");
        for bad in ["../evil", "/etc/passwd", "a/../../x"] {
            let start = FileStart {
                target_dir: target.to_str().unwrap().into(),
                auto_mkdir: true,
                entries: vec![
                    entry("ok", EntryType::EntryDir),
                    entry(bad, EntryType::EntryDir),
                ],
                ..FileStart::default()
            };
            let err = Plan::build(&start, root.path()).unwrap_err();
            assert_eq!(err.code, codes::PATH, "{bad}: {err}");
        }
        assert!(!target.exists(), "nothing was created");
    }

    #[test]
    fn relays_plan_into_their_cache() {
        let cache = tempfile::tempdir().unwrap();
        let mut start = FileStart {
            transfer_id: "../GSE:1/x".into(),
            task_index: 3,
            target_dir: "/nowhere".into(),
            owner: "no-such-user-here".into(),
            entries: vec![entry("d", EntryType::EntryDir)],
            ..FileStart::default()
        };
        start.set_role(FileRole::RoleRelay);
        let plan = Plan::build(&start, cache.path()).unwrap();
        assert_eq!(plan.root, cache.path().join("_.._GSE:1_x").join("3"));
        assert!(plan.root.is_dir() && plan.relay && plan.opts.owner.is_none());
    }
}

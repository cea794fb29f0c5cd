//! `<data_dir>/plugins.json`: what the supervisor must remember across an
//! agent restart (every plugin it knows, whether it hosts it, the pid it
//! saw and the restart bookkeeping).
//!
//! Written atomically: a temp file in the same directory, fsync, rename,
//! fsync of the directory; a crash leaves the old file or the new one,
//! never half of one. A file that does not parse is moved aside (named in
//! the log) so the agent still starts, knowing no plugins.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{PluginId, PluginSpec};

/// Layout version of the file.
const FORMAT_VERSION: u32 = 1;
/// Largest state file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One plugin as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedPlugin {
    pub id: PluginId,
    pub spec: PluginSpec,
    /// Hosted (delegated): restarted when it dies.
    pub hosted: bool,
    /// The pid last seen alive, and its start time (Linux clock ticks).
    pub pid: Option<u32>,
    pub start_ticks: Option<u64>,
    pub failed_restarts: u32,
    pub gave_up: bool,
    pub version: String,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    plugins: Vec<SavedPlugin>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read plugin state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin state {path} is not usable ({why}); it was moved to {moved} and the agent starts with no known plugins"
    )]
    Corrupt {
        path: PathBuf,
        why: String,
        moved: PathBuf,
    },
    #[error(
        "cannot write plugin state {path}: {source}; check the disk and the permissions of agent.data_dir"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the saved plugins; none when the file does not exist.
pub fn load(path: &Path) -> Result<Vec<SavedPlugin>, StateError> {
    let read_err = |source| StateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let parsed = if meta.len() > MAX_FILE_BYTES {
        Err(format!("{} bytes, over {MAX_FILE_BYTES}", meta.len()))
    } else {
        let bytes = std::fs::read(path).map_err(read_err)?;
        serde_json::from_slice::<StateFile>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|f| match f.format {
                FORMAT_VERSION => Ok(f.plugins),
                other => Err(format!("format {other}, this agent reads {FORMAT_VERSION}")),
            })
    };
    parsed.map_err(|why| {
        let moved = path.with_extension(format!("json.bad-{}", gse_core::now_ms()));
        let _ = std::fs::rename(path, &moved);
        StateError::Corrupt {
            path: path.to_path_buf(),
            why,
            moved,
        }
    })
}

/// Replaces the file with `plugins`, atomically.
pub fn save(path: &Path, plugins: &[SavedPlugin]) -> Result<(), StateError> {
    let write_err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(&StateFile {
        format: FORMAT_VERSION,
        plugins: plugins.to_vec(),
    })
    .map_err(|e| write_err(std::io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(&body).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn saved(name: &str) -> SavedPlugin {
        let wire = gse_proto::link::ProcSpec {
            proc_name: name.into(),
            setup_path: "/opt/x".into(),
            start_cmd: "./start.sh".into(),
            start_retries: 3,
            ..Default::default()
        };
        let mut labels = BTreeMap::new();
        labels.insert("proc_name".to_string(), name.to_string());
        SavedPlugin {
            id: PluginId {
                namespace: "nodeman".into(),
                name: name.into(),
            },
            spec: PluginSpec::from_wire(&wire, labels).unwrap(),
            hosted: true,
            pid: Some(4242),
            start_ticks: Some(99),
            failed_restarts: 2,
            gave_up: false,
            version: "1.2.3".into(),
        }
    }

    #[test]
    fn round_trip_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.json");
        assert!(load(&path).unwrap().is_empty());
        let plugins = vec![saved("a"), saved("b")];
        save(&path, &plugins).unwrap();
        assert_eq!(load(&path).unwrap(), plugins);
        // Saving again replaces, and leaves no temp file behind.
        save(&path, &plugins[..1]).unwrap();
        assert_eq!(load(&path).unwrap(), plugins[..1]);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = load(&path).unwrap_err();
        let StateError::Corrupt { moved, .. } = &err else {
            panic!("{err}");
        };
        assert!(moved.exists());
        assert!(!path.exists());
        assert!(load(&path).unwrap().is_empty());
    }
}

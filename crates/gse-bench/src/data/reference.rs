//! The disk reference: how fast this machine appends the same volume the
//! file sink will write, with plain `write(2)`s of 256 KiB into a file on
//! the same file system, measured in the same run. No file sink can beat
//! it, so the pipeline's figure is also given as a ratio of it. Two
//! figures: the appends alone (into the page cache, as the sink's writes
//! go; how fast depends on how much dirty data the kernel already holds),
//! and appends plus one `fdatasync` at the end (what the disk sustains).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

const CHUNK: usize = 256 * 1024;

#[derive(Debug, serde::Serialize)]
pub struct DiskFigures {
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Including the final fdatasync.
    pub synced_seconds: f64,
    pub synced_mb_per_s: f64,
}

/// Appends `bytes` to a new file in `dir`, then removes it.
pub fn run(dir: &Path, bytes: u64) -> Result<DiskFigures> {
    let path = dir.join("disk-reference.bin");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let chunk = vec![b'x'; CHUNK];
    let began = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&chunk[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    let seconds = began.elapsed().as_secs_f64();
    file.sync_data()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    let synced_seconds = began.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).ok();
    Ok(DiskFigures {
        bytes,
        seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        synced_seconds,
        synced_mb_per_s: bytes as f64 / synced_seconds / 1e6,
    })
}

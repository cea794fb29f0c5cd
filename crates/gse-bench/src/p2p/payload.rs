//! The file being distributed: made once per run (pseudo-random bytes, so
//! no layer can compress or deduplicate them), hashed as it is written;
//! each target's copy checked against it (size + blake3) after a phase,
//! then deleted; all of it deleted at the end, whatever happened, so a run
//! never leaves gigabytes behind (logs and configs stay when kept).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures::StreamExt;

/// Bytes written or read at a time.
const CHUNK: usize = 1 << 20;

/// The source file of a run.
#[derive(Clone, Debug)]
pub struct Payload {
    pub path: PathBuf,
    pub size: u64,
    pub blake3: blake3::Hash,
}

impl Payload {
    /// Writes `size` pseudo-random bytes to `path`.
    pub async fn create(path: PathBuf, size: u64) -> Result<Payload> {
        tokio::task::spawn_blocking(move || write_noise(path, size)).await?
    }

    /// The file's name, as `file_name` of the request.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Checks every file in `copies` (size and blake3, a few at a time);
    /// returns how many matched and what was wrong with the others.
    pub async fn verify(&self, copies: Vec<PathBuf>) -> (usize, Vec<String>) {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let results: Vec<Result<()>> = futures::stream::iter(copies)
            .map(|path| {
                let want = self.clone();
                async move {
                    tokio::task::spawn_blocking(move || want.check(&path))
                        .await
                        .context("a verification task panicked")?
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
        let total = results.len();
        let problems: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err())
            .map(|e| format!("{e:#}"))
            .collect();
        (total - problems.len(), problems)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("{}: missing", path.display()))?
            .len();
        anyhow::ensure!(
            size == self.size,
            "{}: {size} bytes, expected {}",
            path.display(),
            self.size
        );
        let got = hash_file(path)?;
        anyhow::ensure!(
            got == self.blake3,
            "{}: blake3 {got} differs from the source's {}",
            path.display(),
            self.blake3
        );
        Ok(())
    }
}

fn write_noise(path: PathBuf, size: u64) -> Result<Payload> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut hasher = blake3::Hasher::new();
    let mut x: u64 = rand::random::<u64>() | 1;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64: fast, and never the same 8 bytes twice in a row.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(CHUNK as u64) as usize;
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Payload {
        path,
        size,
        blake3: hasher.finalize(),
    })
}

fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Removes `paths` (files) if they exist; says what could not be removed.
pub fn remove_files(paths: impl IntoIterator<Item = PathBuf>) {
    for path in paths {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("cannot remove {}: {e}; remove it by hand", path.display()),
        }
    }
}

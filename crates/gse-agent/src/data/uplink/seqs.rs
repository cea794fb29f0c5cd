//! Batch sequence numbers that keep increasing across agent restarts.
//!
//! The DataServer and the sinks identify a delivery by (agent, seq), so a
//! restarted agent must never reuse a seq. Writing the counter for every
//! batch would cost a sync per batch; instead a *lease* is written: the
//! file `<spool_dir>/batch-seq` holds a number no seq has reached yet, and
//! seqs are handed out below it. When the lease runs out a new one is
//! written first. A crash skips at most one lease's worth of numbers.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Seqs handed out per lease write.
pub const LEASE: u64 = 1 << 16;

/// Why the counter file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error(
        "cannot read or write the batch counter {path}: {source}; check that the spool dir is writable"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the batch counter {path} is corrupt ({text:?}); delete it only if the spool dir is empty"
    )]
    Corrupt { path: PathBuf, text: String },
}

/// The seq source of one agent.
#[derive(Debug)]
pub struct SeqLease {
    path: PathBuf,
    next: u64,
    leased_to: u64,
}

// === impl SeqLease ===

impl SeqLease {
    /// Opens the counter in `dir`, starting at or above `floor` (e.g. one
    /// past the highest seq still in the spool).
    pub fn open(dir: &Path, floor: u64) -> Result<SeqLease, SeqError> {
        let path = dir.join("batch-seq");
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| SeqError::Corrupt {
                path: path.clone(),
                text: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(SeqError::Io { path, source }),
        };
        // Seq 0 is never used: a zero seq on the wire means "unset".
        let next = stored.max(floor).max(1);
        let mut lease = SeqLease {
            path,
            next,
            leased_to: next,
        };
        lease.renew()?;
        Ok(lease)
    }

    /// The next seq.
    pub fn take(&mut self) -> Result<u64, SeqError> {
        if self.next >= self.leased_to {
            self.renew()?;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }

    fn renew(&mut self) -> Result<(), SeqError> {
        let to = self.next + LEASE;
        let tmp = self.path.with_extension("tmp");
        let io = |source| SeqError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{to}\n").as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.leased_to = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_keep_increasing_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqLease::open(dir.path(), 0).unwrap();
        let first = a.take().unwrap();
        let second = a.take().unwrap();
        assert!(first >= 1 && second == first + 1);
        drop(a);
        let mut b = SeqLease::open(dir.path(), 0).unwrap();
        assert!(b.take().unwrap() > second);
        let mut c = SeqLease::open(dir.path(), 10 * LEASE).unwrap();
        assert!(c.take().unwrap() >= 10 * LEASE);
    }

    #[test]
    fn running_out_of_a_lease_renews_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqLease::open(dir.path(), 0).unwrap();
        let mut last = 0;
        for _ in 0..LEASE + 3 {
            let s = a.take().unwrap();
            assert!(s > last);
            last = s;
        }
        drop(a);
        let mut b = SeqLease::open(dir.path(), 0).unwrap();
        assert!(b.take().unwrap() > last);
    }
}

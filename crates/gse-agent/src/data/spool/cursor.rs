//! The persisted read cursor: the first seq that is not yet acknowledged.
//!
//! A 32-byte file of two 16-byte slots, `seq: u64 LE | crc32(seq): u32 LE |
//! magic: u32 LE`. Each store overwrites the slot that does *not* hold the
//! current value, so a write torn by a crash damages at most the new value
//! and the previous one survives in the other slot. The cursor only moves
//! forward, so on open the larger valid slot wins. No rename or directory
//! sync is needed per ack: one small in-place write (plus `fdatasync` when
//! the sync policy asks for it).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

const SLOT_LEN: usize = 16;
const MAGIC: u32 = 0x4753_4543; // "GSEC"

pub(super) struct CursorFile {
    file: File,
    /// Slot the next store writes (the one not holding the newest value).
    next_slot: u64,
}

impl CursorFile {
    /// Opens or creates the cursor file; returns the stored seq if a valid
    /// slot exists. Returns whether the file was created (so the caller can
    /// sync the directory).
    pub(super) fn open(path: &Path) -> io::Result<(CursorFile, Option<u64>, bool)> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut raw = Vec::with_capacity(2 * SLOT_LEN);
        file.read_to_end(&mut raw)?;
        let slot = |i: usize| {
            raw.get(i * SLOT_LEN..(i + 1) * SLOT_LEN)
                .and_then(parse_slot)
        };
        let (stored, next_slot) = match (slot(0), slot(1)) {
            (Some(a), Some(b)) if b > a => (Some(b), 0),
            (Some(a), _) => (Some(a), 1),
            (None, Some(b)) => (Some(b), 0),
            (None, None) => (None, 0),
        };
        Ok((CursorFile { file, next_slot }, stored, created))
    }

    /// Writes `seq` into the older slot; syncs when `sync` is set.
    pub(super) fn store(&mut self, seq: u64, sync: bool) -> io::Result<()> {
        let mut slot = [0u8; SLOT_LEN];
        slot[0..8].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&slot[0..8]);
        slot[8..12].copy_from_slice(&crc.to_le_bytes());
        slot[12..16].copy_from_slice(&MAGIC.to_le_bytes());
        self.file
            .seek(SeekFrom::Start(self.next_slot * SLOT_LEN as u64))?;
        self.file.write_all(&slot)?;
        self.next_slot ^= 1;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn parse_slot(slot: &[u8]) -> Option<u64> {
    let seq = &slot[0..8];
    let crc = u32::from_le_bytes(slot[8..12].try_into().ok()?);
    let magic = u32::from_le_bytes(slot[12..16].try_into().ok()?);
    (magic == MAGIC && crc32fast::hash(seq) == crc)
        .then(|| u64::from_le_bytes(seq.try_into().expect("8 bytes")))
}

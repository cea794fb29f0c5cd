//! A fixed-size set of piece indices: "which pieces does this side have".
//!
//! [`PieceSet`] is the have-bitmap of F1: the writer keeps ours, peers
//! announce theirs, and the picker intersects them. It is a plain bitset
//! over `0..len` (one bit per piece, 64 per word), small enough to send as
//! bytes ([`PieceSet::to_bytes`], little-endian bit order within each byte)
//! in a have-announcement. It knows nothing about files or hashes.

use serde::{Deserialize, Serialize};

/// Why bytes received from a peer are not a valid have-bitmap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceSetError {
    #[error(
        "a have-bitmap for {len} pieces needs {expected} bytes, got {got}; the peer announced a bitmap for a different manifest"
    )]
    WrongLength {
        len: u32,
        expected: usize,
        got: usize,
    },
    #[error(
        "the have-bitmap for {len} pieces sets bit {bit}, past the last piece; the peer's bitmap is corrupt"
    )]
    BitPastEnd { len: u32, bit: u32 },
}

/// A set of piece indices in `0..len`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceSet {
    len: u32,
    words: Vec<u64>,
}

// === impl PieceSet ===

impl PieceSet {
    /// An empty set for a file of `len` pieces.
    pub fn new(len: u32) -> Self {
        PieceSet {
            len,
            words: vec![0; (len as usize).div_ceil(64)],
        }
    }

    /// A set holding every piece in `0..len` (a seeder's bitmap).
    pub fn full(len: u32) -> Self {
        let mut set = PieceSet::new(len);
        for index in 0..len {
            set.insert(index);
        }
        set
    }

    /// The number of pieces the set ranges over (not how many are present).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the file has no pieces at all (an empty file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is present; `false` past the end.
    pub fn contains(&self, index: u32) -> bool {
        index < self.len && self.words[(index / 64) as usize] & bit(index) != 0
    }

    /// Adds piece `index`; returns whether it was newly added.
    ///
    /// # Panics
    /// When `index >= len()`: callers check the index against the manifest
    /// first, so this is a bug, not bad input.
    pub fn insert(&mut self, index: u32) -> bool {
        assert!(
            index < self.len,
            "piece {index} out of range 0..{}",
            self.len
        );
        let word = &mut self.words[(index / 64) as usize];
        let added = *word & bit(index) == 0;
        *word |= bit(index);
        added
    }

    /// Removes piece `index` (e.g. an in-flight request that failed).
    pub fn remove(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let removed = *word & bit(index) != 0;
        *word &= !bit(index);
        removed
    }

    /// How many pieces are present.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// True when every piece is present (also for an empty file).
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// The present pieces, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }

    /// The missing pieces, in ascending order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.contains(i))
    }

    /// The wire form: `ceil(len / 8)` bytes, piece `i` in bit `i % 8` of
    /// byte `i / 8`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate((self.len as usize).div_ceil(8));
        bytes
    }

    /// Parses [`PieceSet::to_bytes`] for a file of `len` pieces.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, PieceSetError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(PieceSetError::WrongLength {
                len,
                expected,
                got: bytes.len(),
            });
        }
        let mut set = PieceSet::new(len);
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            set.words[i] = u64::from_le_bytes(word);
        }
        if let Some(bit) = set.first_bit_past_end() {
            return Err(PieceSetError::BitPastEnd { len, bit });
        }
        Ok(set)
    }

    fn first_bit_past_end(&self) -> Option<u32> {
        let last = self.words.last()?;
        let used = self.len % 64;
        if used == 0 {
            return None;
        }
        let extra = last >> used;
        (extra != 0).then(|| self.len + extra.trailing_zeros())
    }
}

impl std::fmt::Debug for PieceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PieceSet({}/{})", self.count(), self.len)
    }
}

fn bit(index: u32) -> u64 {
    1u64 << (index % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_remove_and_count() {
        let mut set = PieceSet::new(130);
        assert!(set.insert(0));
        assert!(set.insert(64));
        assert!(set.insert(129));
        assert!(!set.insert(64), "second insert is not new");
        assert_eq!(set.count(), 3);
        assert!(set.contains(129) && !set.contains(128) && !set.contains(500));
        assert!(set.remove(64));
        assert!(!set.remove(64));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 129]);
        assert_eq!(set.missing().count(), 128);
    }

    #[test]
    fn full_and_empty_sets() {
        assert!(PieceSet::full(70).is_full());
        assert!(!PieceSet::new(70).is_full());
        let empty = PieceSet::new(0);
        assert!(empty.is_empty() && empty.is_full() && empty.to_bytes().is_empty());
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn insert_past_end_is_a_bug() {
        PieceSet::new(3).insert(3);
    }

    #[test]
    fn bytes_round_trip() {
        let mut set = PieceSet::new(77);
        for i in [0, 7, 8, 63, 64, 76] {
            set.insert(i);
        }
        let bytes = set.to_bytes();
        assert_eq!(bytes.len(), 10);
        assert_eq!(bytes[0], 0b1000_0001);
        assert_eq!(PieceSet::from_bytes(77, &bytes).unwrap(), set);
    }

    #[test]
    fn bad_bytes_are_refused() {
        assert_eq!(
            PieceSet::from_bytes(9, &[0xff]),
            Err(PieceSetError::WrongLength {
                len: 9,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            PieceSet::from_bytes(9, &[0xff, 0b0000_0101]),
            Err(PieceSetError::BitPastEnd { len: 9, bit: 10 })
        );
    }
}

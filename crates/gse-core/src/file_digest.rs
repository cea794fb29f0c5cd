//! A file's content fingerprint: pieces, per-piece blake3, whole-file hashes
//! (the agents' manifests, and the node's for content it pushes itself).
//!
//! [`FileDigest`] is what a manifest says about one regular file, and what
//! a target checks received bytes against (F5): a blake3 hash per piece
//! (integrity of each piece as it arrives), a whole-file blake3, and an MD5
//! hex only because BlueKing APIs pass MD5 values around (DEPENDENCIES §6:
//! MD5 is never used for pieces). [`digest_reader`] computes all of it in
//! one streaming pass with one piece-sized buffer. Piece size is adaptive
//! ([`piece_size_for`]).

use std::io::{self, Read};

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

/// Piece size for files up to [`LARGE_FILE_THRESHOLD`]: 1 MiB.
pub const SMALL_PIECE_SIZE: u32 = 1 << 20;
/// Piece size for files above [`LARGE_FILE_THRESHOLD`]: 4 MiB, so a 100 GiB
/// file still has a manifest of well under 1 MiB of hashes.
pub const LARGE_PIECE_SIZE: u32 = 4 << 20;
/// Files larger than this (1 GiB) use [`LARGE_PIECE_SIZE`].
pub const LARGE_FILE_THRESHOLD: u64 = 1 << 30;

/// The piece size the source chooses for a file of `size` bytes.
pub fn piece_size_for(size: u64) -> u32 {
    if size > LARGE_FILE_THRESHOLD {
        LARGE_PIECE_SIZE
    } else {
        SMALL_PIECE_SIZE
    }
}

/// How many pieces of `piece_size` cover `size` bytes (0 for an empty file).
pub fn piece_count(size: u64, piece_size: u32) -> u64 {
    size.div_ceil(u64::from(piece_size.max(1)))
}

/// A 32-byte blake3 hash; serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Blake3Hash(pub [u8; 32]);

/// Why a [`FileDigest`] (e.g. from a peer's manifest) cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("piece size is 0; the manifest is corrupt")]
    ZeroPieceSize,
    #[error(
        "a file of {size} bytes in pieces of {piece_size} needs {expected} piece hashes, the manifest has {got}; it is corrupt"
    )]
    PieceCount {
        size: u64,
        piece_size: u32,
        expected: u64,
        got: usize,
    },
    #[error("the MD5 {md5:?} is not 32 lowercase hex digits; the manifest is corrupt")]
    BadMd5 { md5: String },
}

/// What a manifest records about one regular file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub size: u64,
    /// Bytes per piece; the last piece may be shorter.
    pub piece_size: u32,
    /// blake3 of each piece, in order.
    pub pieces: Vec<Blake3Hash>,
    /// blake3 of the whole content.
    pub blake3: Blake3Hash,
    /// MD5 of the whole content, 32 lowercase hex digits.
    pub md5: String,
}

// === impl FileDigest ===

impl FileDigest {
    /// The number of pieces (what a have-bitmap ranges over).
    pub fn piece_count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Byte offset and length of piece `index`, or `None` past the end.
    pub fn piece_range(&self, index: u32) -> Option<(u64, usize)> {
        if index >= self.piece_count() {
            return None;
        }
        let offset = u64::from(index) * u64::from(self.piece_size);
        let len = self
            .size
            .saturating_sub(offset)
            .min(u64::from(self.piece_size));
        Some((offset, len as usize))
    }

    /// Whether `bytes` is exactly piece `index` (length and blake3).
    pub fn piece_matches(&self, index: u32, bytes: &[u8]) -> bool {
        match self.piece_range(index) {
            Some((_, len)) if len == bytes.len() => {
                Blake3Hash::of(bytes) == self.pieces[index as usize]
            }
            _ => false,
        }
    }

    /// Checks that the fields agree with each other. A digest from another
    /// host must pass this before it sizes buffers or bitmaps.
    pub fn validate(&self) -> Result<(), DigestError> {
        if self.piece_size == 0 {
            return Err(DigestError::ZeroPieceSize);
        }
        let expected = piece_count(self.size, self.piece_size);
        if expected != self.pieces.len() as u64 || expected > u64::from(u32::MAX) {
            return Err(DigestError::PieceCount {
                size: self.size,
                piece_size: self.piece_size,
                expected,
                got: self.pieces.len(),
            });
        }
        let hex_ok = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if self.md5.len() != 32 || !self.md5.bytes().all(hex_ok) {
            return Err(DigestError::BadMd5 {
                md5: self.md5.clone(),
            });
        }
        Ok(())
    }
}

/// Reads exactly `size` bytes from `reader` and fingerprints them in pieces
/// of `piece_size`, holding one piece in memory. Bytes past `size` are not
/// read, so a file that grows while being read (a log) yields a consistent
/// digest of its first `size` bytes; one that shrinks fails with
/// `UnexpectedEof`. Blocking.
pub fn digest_reader<R: Read>(mut reader: R, size: u64, piece_size: u32) -> io::Result<FileDigest> {
    assert!(piece_size > 0, "piece size must be positive");
    let mut buf = vec![0u8; size.min(u64::from(piece_size)) as usize];
    let mut whole = blake3::Hasher::new();
    let mut md5 = Md5::new();
    let mut pieces = Vec::with_capacity(piece_count(size, piece_size) as usize);
    let mut left = size;
    while left > 0 {
        let len = left.min(u64::from(piece_size)) as usize;
        let piece = &mut buf[..len];
        reader.read_exact(piece)?;
        pieces.push(Blake3Hash::of(piece));
        whole.update(piece);
        md5.update(&*piece);
        left -= len as u64;
    }
    Ok(FileDigest {
        size,
        piece_size,
        pieces,
        blake3: Blake3Hash(*whole.finalize().as_bytes()),
        md5: hex::encode(md5.finalize()),
    })
}

/// MD5 of `bytes` as 32 lowercase hex digits.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

// === impl Blake3Hash ===

impl Blake3Hash {
    /// The blake3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Blake3Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Blake3Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blake3Hash({})", self.to_hex())
    }
}

impl std::fmt::Display for Blake3Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Blake3Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Blake3Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(|e| {
            serde::de::Error::custom(format!("blake3 hash {text:?} is not 64 hex digits: {e}"))
        })?;
        Ok(Blake3Hash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn piece_size_is_adaptive() {
        assert_eq!(piece_size_for(0), SMALL_PIECE_SIZE);
        assert_eq!(piece_size_for(LARGE_FILE_THRESHOLD), SMALL_PIECE_SIZE);
        assert_eq!(piece_size_for(LARGE_FILE_THRESHOLD + 1), LARGE_PIECE_SIZE);
    }

    #[test]
    fn digest_matches_one_shot_hashes() {
        let data = content(10_000);
        let d = digest_reader(&data[..], data.len() as u64, 4096).unwrap();
        assert_eq!(d.piece_count(), 3);
        assert_eq!(d.pieces[0], Blake3Hash::of(&data[..4096]));
        assert_eq!(d.pieces[2], Blake3Hash::of(&data[8192..]));
        assert_eq!(d.blake3, Blake3Hash::of(&data));
        assert_eq!(d.md5, md5_hex(&data));
        assert_eq!(d.piece_range(2), Some((8192, 10_000 - 8192)));
        assert_eq!(d.piece_range(3), None);
        assert!(d.piece_matches(1, &data[4096..8192]));
        assert!(!d.piece_matches(1, &data[4095..8191]));
        assert!(
            !d.piece_matches(2, &data[8192..9000]),
            "short piece refused"
        );
        d.validate().unwrap();
    }

    #[test]
    fn empty_file_has_no_pieces() {
        let d = digest_reader(&[][..], 0, SMALL_PIECE_SIZE).unwrap();
        assert!(d.pieces.is_empty());
        assert_eq!(d.md5, "d41d8cd98f00b204e9800998ecf8427e");
        d.validate().unwrap();
    }

    #[test]
    fn reads_only_size_bytes_and_fails_when_short() {
        let data = content(100);
        let d = digest_reader(&data[..], 60, 16).unwrap();
        assert_eq!(d.blake3, Blake3Hash::of(&data[..60]));
        let err = digest_reader(&data[..], 101, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn validate_catches_inconsistent_digests() {
        let mut d = digest_reader(&content(100)[..], 100, 16).unwrap();
        d.pieces.pop();
        assert!(matches!(
            d.validate(),
            Err(DigestError::PieceCount {
                expected: 7,
                got: 6,
                ..
            })
        ));
        let mut d = digest_reader(&content(100)[..], 100, 16).unwrap();
        d.md5 = "XYZ".into();
        assert!(matches!(d.validate(), Err(DigestError::BadMd5 { .. })));
        d.piece_size = 0;
        assert_eq!(d.validate(), Err(DigestError::ZeroPieceSize));
    }

    #[test]
    fn hash_serialises_as_hex() {
        let h = Blake3Hash::of(b"gse");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<Blake3Hash>(&json).unwrap(), h);
        let err = serde_json::from_str::<Blake3Hash>("\"abc\"").unwrap_err();
        assert!(err.to_string().contains("not 64 hex digits"), "{err}");
    }
}

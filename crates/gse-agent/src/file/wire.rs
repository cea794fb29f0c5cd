//! Between file.proto's messages and this module's types.
//!
//! Manifest entries go both ways ([`entry_to_wire`], [`entry_from_wire`]:
//! a manifest from another host is checked before it sizes anything), a
//! request's selection becomes a [`Selection`], and [`PieceDataBody`] is
//! `PieceData` with its `data` as [`Bytes`], so a received piece is a slice
//! of the frame it came in (no copy) and a sent one is written straight
//! from its buffer ([`piece_frame_head`]).

use bytes::{BufMut, Bytes};
use gse_proto::MsgType;
use gse_proto::frame::{FRAME_MAGIC, FRAME_VERSION, HEADER_LEN};
use gse_proto::link::{EntryType, FileEntry, SelectionKind};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::codes::{self, Failure};
use super::digest::{Blake3Hash, DigestError, FileDigest};
use super::manifest::{EntryKind, ManifestEntry, Selection};

/// Largest piece this agent accepts in a manifest (the source uses 1 or 4
/// MiB); bounds every piece buffer and the peer link's frame size.
pub const MAX_PIECE_SIZE: u32 = 8 << 20;

/// `PieceData` (file.proto, type 0x207) with `data` held as [`Bytes`].
/// Same tags and wire types as `gse_proto::link::PieceData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PieceDataBody {
    #[prost(string, tag = "1")]
    pub transfer_id: String,
    #[prost(uint32, tag = "2")]
    pub task_index: u32,
    #[prost(uint32, tag = "3")]
    pub entry_index: u32,
    #[prost(uint32, tag = "4")]
    pub piece: u32,
    #[prost(uint64, tag = "5")]
    pub request_id: u64,
    /// A `PieceStatus`.
    #[prost(int32, tag = "6")]
    pub status: i32,
    #[prost(bytes = "bytes", tag = "7")]
    pub data: Bytes,
    #[prost(string, tag = "8")]
    pub message: String,
}

/// Frame header and protobuf fields of a `PieceData` frame carrying
/// `data_len` bytes of data, everything but the data itself: write this,
/// then the data, and the receiver decodes one `PieceData`. `head.data`
/// must be empty (its bytes are not written).
pub fn piece_frame_head(stream_id: u64, head: &PieceDataBody, data_len: usize) -> Vec<u8> {
    debug_assert!(head.data.is_empty());
    let fields = head.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + fields + 16);
    // Room for the header; filled in once the body length is known.
    out.resize(HEADER_LEN, 0);
    head.encode(&mut out).expect("a Vec grows as needed");
    if data_len > 0 {
        encode_key(7, WireType::LengthDelimited, &mut out);
        encode_varint(data_len as u64, &mut out);
    }
    let body_len = out.len() - HEADER_LEN + data_len;
    out[..HEADER_LEN].copy_from_slice(&frame_header(MsgType::PieceData, stream_id, body_len));
    out
}

/// The 20-byte header of a frame (layout in `gse_proto::frame`), for
/// writing a body that is not in one buffer with it.
pub fn frame_header(msg_type: MsgType, stream_id: u64, body_len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    let mut buf = &mut header[..];
    buf.put_u16(FRAME_MAGIC);
    buf.put_u8(FRAME_VERSION);
    buf.put_u8(0);
    buf.put_u16(msg_type.to_u16());
    buf.put_u16(0);
    buf.put_u64(stream_id);
    buf.put_u32(body_len as u32);
    header
}

/// The manifest entry as sent in `FileManifest` and `FileStart`.
pub fn entry_to_wire(entry: &ManifestEntry) -> FileEntry {
    let mut out = FileEntry {
        path: entry.path.clone(),
        mode: entry.mode,
        ..FileEntry::default()
    };
    match &entry.kind {
        EntryKind::File(d) => {
            out.set_type(EntryType::EntryFile);
            out.size = d.size;
            out.piece_size = d.piece_size;
            out.piece_hashes = d.pieces.iter().flat_map(|h| h.0).collect();
            out.blake3 = d.blake3.0.to_vec();
            out.md5_hex = d.md5.clone();
        }
        EntryKind::Dir => out.set_type(EntryType::EntryDir),
        EntryKind::Symlink { target } => {
            out.set_type(EntryType::EntrySymlink);
            out.link_target = target.clone();
        }
    }
    out
}

/// A received entry, checked for consistency (its path is checked when it
/// is resolved under the target directory). Errors are code 702.
pub fn entry_from_wire(entry: &FileEntry) -> Result<ManifestEntry, Failure> {
    let corrupt = |what: String| {
        Failure::new(
            codes::VERIFICATION,
            format!(
                "manifest entry {:?} is unusable: {what}; the source sent a corrupt manifest, run the transfer again",
                entry.path
            ),
        )
    };
    let kind = match EntryType::try_from(entry.r#type) {
        Ok(EntryType::EntryDir) => EntryKind::Dir,
        Ok(EntryType::EntrySymlink) => EntryKind::Symlink {
            target: entry.link_target.clone(),
        },
        Ok(EntryType::EntryFile) => EntryKind::File(digest_from_wire(entry).map_err(corrupt)?),
        Err(_) => return Err(corrupt(format!("unknown entry type {}", entry.r#type))),
    };
    Ok(ManifestEntry {
        path: entry.path.clone(),
        mode: entry.mode & 0o7777,
        kind,
    })
}

fn digest_from_wire(entry: &FileEntry) -> Result<FileDigest, String> {
    if entry.piece_size > MAX_PIECE_SIZE {
        return Err(format!(
            "piece size {} is over this agent's limit of {MAX_PIECE_SIZE}",
            entry.piece_size
        ));
    }
    if !entry.piece_hashes.len().is_multiple_of(32) {
        return Err(format!(
            "piece_hashes holds {} bytes, not a multiple of 32",
            entry.piece_hashes.len()
        ));
    }
    let blake3: [u8; 32] = entry
        .blake3
        .as_slice()
        .try_into()
        .map_err(|_| format!("blake3 holds {} bytes, not 32", entry.blake3.len()))?;
    let digest = FileDigest {
        size: entry.size,
        piece_size: entry.piece_size,
        pieces: entry
            .piece_hashes
            .chunks_exact(32)
            .map(|c| Blake3Hash(c.try_into().expect("chunks of 32")))
            .collect(),
        blake3: Blake3Hash(blake3),
        md5: entry.md5_hex.clone(),
    };
    digest.validate().map_err(|e: DigestError| e.to_string())?;
    Ok(digest)
}

/// What a `FileManifestRequest` selects (code 708 for an unknown kind).
pub fn selection(kind: i32, pattern: &str) -> Result<Selection, Failure> {
    match SelectionKind::try_from(kind) {
        Ok(SelectionKind::SelectionFile) => Ok(Selection::File(pattern.to_owned())),
        Ok(SelectionKind::SelectionTree) => Ok(Selection::Tree),
        Ok(SelectionKind::SelectionRegex) => Ok(Selection::Regex(pattern.to_owned())),
        Ok(SelectionKind::SelectionWildcard) => Ok(Selection::Wildcard(pattern.to_owned())),
        Err(_) => Err(Failure::new(
            codes::SOURCE_BAD_SELECTION,
            format!("unknown selection kind {kind}; upgrade this agent"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use gse_proto::link::{PieceData, PieceStatus};
    use gse_proto::{Frame, FrameCodec};
    use tokio_util::codec::Decoder;

    use crate::file::digest::digest_reader;

    #[test]
    fn piece_frames_written_in_two_parts_decode_as_piece_data() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let head = PieceDataBody {
            transfer_id: "t".into(),
            task_index: 2,
            entry_index: 3,
            piece: 4,
            request_id: 5,
            status: PieceStatus::PieceOk as i32,
            message: "m".into(),
            ..Default::default()
        };
        let mut wire = BytesMut::from(&piece_frame_head(9, &head, data.len())[..]);
        wire.extend_from_slice(&data);
        let frame = FrameCodec::default().decode(&mut wire).unwrap().unwrap();
        assert_eq!((frame.msg_type, frame.stream_id), (MsgType::PieceData, 9));
        let std: PieceData = frame.decode().unwrap();
        assert_eq!(
            (std.piece, std.request_id, std.message.as_str()),
            (4, 5, "m")
        );
        assert_eq!(std.data, data);
        let ours: PieceDataBody = frame.decode().unwrap();
        assert_eq!(ours.data, data);
        // And the usual encoding decodes as ours.
        let again = Frame::new(MsgType::PieceData, 1, &std);
        assert_eq!(again.decode::<PieceDataBody>().unwrap().data, data);
    }

    #[test]
    fn entries_round_trip_and_corrupt_ones_are_refused() {
        let data = vec![7u8; 5000];
        let digest = digest_reader(&data[..], 5000, 1024).unwrap();
        let entry = ManifestEntry {
            path: "a/b".into(),
            mode: 0o640,
            kind: EntryKind::File(digest),
        };
        let wire = entry_to_wire(&entry);
        assert_eq!(wire.piece_hashes.len(), 5 * 32);
        assert_eq!(entry_from_wire(&wire).unwrap(), entry);
        let mut bad = wire.clone();
        bad.piece_hashes.pop();
        assert_eq!(entry_from_wire(&bad).unwrap_err().code, codes::VERIFICATION);
        let mut bad = wire;
        bad.size = 1 << 40;
        assert_eq!(entry_from_wire(&bad).unwrap_err().code, codes::VERIFICATION);
        let link = ManifestEntry {
            path: "l".into(),
            mode: 0o777,
            kind: EntryKind::Symlink {
                target: "../x".into(),
            },
        };
        assert_eq!(entry_from_wire(&entry_to_wire(&link)).unwrap(), link);
    }
}

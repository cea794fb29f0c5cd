//! The data link's batch body, and the whole `DataBatch` frame built with
//! one copy of each payload.
//!
//! [`DataBatch`]/[`DataRecord`] have the same tags and types as
//! `DataBatch`/`DataRecord` in `proto/gse/link/v1/data.proto` (a test checks
//! the bytes against the generated types), with `Bytes` payloads; they are
//! used to read a batch back (spool, tests).
//!
//! [`BatchBuf`] is what the batcher fills: each record is protobuf-encoded
//! straight into one buffer as it arrives (its payload copied once, from the
//! socket's read buffer), behind room for the frame header and the seq.
//! [`BatchBuf::finish`] writes those into that room once the uplink knows
//! the seq, so the finished frame is one contiguous `Bytes` the link writes
//! as is: no re-encoding, no copy into a codec buffer, and a retry or a
//! resend after a move sends the same bytes again. The bytes are exactly
//! what `prost` would encode for the same `DataBatch` (tested).

use bytes::{BufMut, Bytes, BytesMut};
use gse_proto::MsgType;
use gse_proto::frame::{FRAME_MAGIC, FRAME_VERSION, HEADER_LEN};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

pub use gse_proto::link::{DataBatch, DataRecord};

use super::ipc_codec::Peer;

/// Tags of `DataBatch` and `DataRecord`.
const TAG_SEQ: u32 = 1;
const TAG_RECORDS: u32 = 2;
const TAG_DATA_ID: u32 = 1;
const TAG_RECEIVED_MS: u32 = 2;
const TAG_PAYLOAD: u32 = 3;
const TAG_PEER_UID: u32 = 4;
const TAG_PEER_PID: u32 = 5;
/// Room before the records: the frame header and the seq field (one key
/// byte and at most ten varint bytes).
pub const HEADROOM: usize = HEADER_LEN + 1 + 10;

/// Longest encoded seq field (key and a ten-byte varint): what
/// [`BatchBuf::finish`] adds to the records.
pub const SEQ_FIELD_MAX: usize = 11;

/// The encoded size of one record inside a batch (key, length, message).
pub fn record_encoded_len(data_id: u32, received_ms: u64, peer: Peer, payload_len: usize) -> usize {
    let inner = record_inner_len(data_id, received_ms, peer, payload_len);
    key_len(TAG_RECORDS) + encoded_len_varint(inner as u64) + inner
}

/// The sender fields as they go on the wire (`optional uint32`: present,
/// even when 0, whenever known).
fn peer_fields(peer: Peer) -> [(u32, Option<u32>); 2] {
    let pid = peer.pid.and_then(|p| u32::try_from(p).ok());
    [(TAG_PEER_UID, peer.uid), (TAG_PEER_PID, pid)]
}

fn record_inner_len(data_id: u32, received_ms: u64, peer: Peer, payload_len: usize) -> usize {
    let mut n = 0;
    for (tag, value) in peer_fields(peer) {
        if let Some(v) = value {
            n += key_len(tag) + encoded_len_varint(u64::from(v));
        }
    }
    if data_id != 0 {
        n += key_len(TAG_DATA_ID) + encoded_len_varint(u64::from(data_id));
    }
    if received_ms != 0 {
        n += key_len(TAG_RECEIVED_MS) + encoded_len_varint(received_ms);
    }
    if payload_len != 0 {
        n += key_len(TAG_PAYLOAD) + encoded_len_varint(payload_len as u64) + payload_len;
    }
    n
}

/// A `DataBatch` frame being filled (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchBuf {
    buf: BytesMut,
    records: usize,
}

// === impl BatchBuf ===

impl BatchBuf {
    /// An empty batch with room for about `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> BatchBuf {
        let mut buf = BytesMut::with_capacity(HEADROOM + capacity);
        buf.put_bytes(0, HEADROOM);
        BatchBuf { buf, records: 0 }
    }

    /// Appends one `DataRecord`.
    pub fn push(&mut self, data_id: u32, received_ms: u64, peer: Peer, payload: &[u8]) {
        let inner = record_inner_len(data_id, received_ms, peer, payload.len());
        let buf = &mut self.buf;
        buf.reserve(key_len(TAG_RECORDS) + encoded_len_varint(inner as u64) + inner);
        encode_key(TAG_RECORDS, WireType::LengthDelimited, buf);
        encode_varint(inner as u64, buf);
        if data_id != 0 {
            encode_key(TAG_DATA_ID, WireType::Varint, buf);
            encode_varint(u64::from(data_id), buf);
        }
        if received_ms != 0 {
            encode_key(TAG_RECEIVED_MS, WireType::Varint, buf);
            encode_varint(received_ms, buf);
        }
        if !payload.is_empty() {
            encode_key(TAG_PAYLOAD, WireType::LengthDelimited, buf);
            encode_varint(payload.len() as u64, buf);
            buf.put_slice(payload);
        }
        for (tag, value) in peer_fields(peer) {
            if let Some(v) = value {
                encode_key(tag, WireType::Varint, buf);
                encode_varint(u64::from(v), buf);
            }
        }
        self.records += 1;
    }

    /// Records pushed so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Encoded bytes of the records so far.
    pub fn records_len(&self) -> usize {
        self.buf.len() - HEADROOM
    }

    /// Writes the seq and the frame header (type `DataBatch`, stream id =
    /// `seq`) in front of the records; returns the whole frame.
    pub fn finish(self, seq: u64) -> Bytes {
        let mut buf = self.buf;
        let mut seq_field = [0u8; SEQ_FIELD_MAX];
        let mut seq_len = 0;
        if seq != 0 {
            let mut w = &mut seq_field[..];
            encode_key(TAG_SEQ, WireType::Varint, &mut w);
            encode_varint(seq, &mut w);
            seq_len = key_len(TAG_SEQ) + encoded_len_varint(seq);
        }
        let body_len = seq_len + buf.len() - HEADROOM;
        let start = HEADROOM - seq_len - HEADER_LEN;
        let mut head = &mut buf[start..HEADROOM];
        put_header(&mut head, MsgType::DataBatch, seq, body_len);
        head.put_slice(&seq_field[..seq_len]);
        buf.freeze().slice(start..)
    }
}

/// Writes a frame header (the layout of [`gse_proto::frame`]).
fn put_header(dst: &mut impl BufMut, msg_type: MsgType, stream_id: u64, body_len: usize) {
    dst.put_u16(FRAME_MAGIC);
    dst.put_u8(FRAME_VERSION);
    dst.put_u8(0);
    dst.put_u16(msg_type.to_u16());
    dst.put_u16(0);
    dst.put_u64(stream_id);
    dst.put_u32(u32::try_from(body_len).unwrap_or(u32::MAX));
}

/// The body of a finished `DataBatch` frame (the frame minus its header).
pub fn frame_body(frame: &Bytes) -> Bytes {
    frame.slice(HEADER_LEN.min(frame.len())..)
}

#[cfg(test)]
mod tests {
    use gse_proto::{Frame, FrameCodec};
    use prost::Message;
    use tokio_util::codec::Encoder;

    use super::*;

    /// What the codec would put on the wire for `batch`.
    fn codec_frame(batch: &DataBatch) -> Vec<u8> {
        let frame = Frame::new(MsgType::DataBatch, batch.seq, batch);
        let mut out = BytesMut::new();
        FrameCodec::default().encode(frame, &mut out).unwrap();
        out.to_vec()
    }

    /// (data id, receive time, payload)
    type Rec<'a> = (u32, u64, &'a [u8]);

    /// Who sent record `i` of a case: unknown, root, or a user.
    fn peer_of(i: usize) -> Peer {
        match i % 3 {
            0 => Peer::default(),
            1 => Peer {
                pid: Some(1),
                uid: Some(0),
            },
            _ => Peer {
                pid: Some(i32::MAX),
                uid: Some(65534),
            },
        }
    }

    #[test]
    fn batch_buf_frames_equal_the_codec_and_prost_encoding() {
        let big = vec![b'z'; 300];
        let cases: Vec<(u64, Vec<Rec<'_>>)> = vec![
            (0, vec![]),
            (1, vec![(7, 5, b"a")]),
            (300, vec![(0, 0, b""), (1, 0, b"x"), (0, 9, b"")]),
            (
                u64::MAX,
                vec![
                    (u32::MAX, u64::MAX, &big[..]),
                    (1_500_001, 1_700_000_000_000, b"{}"),
                ],
            ),
        ];
        for (seq, records) in cases {
            let mut b = BatchBuf::with_capacity(4);
            let mut expect = DataBatch {
                seq,
                records: Vec::new(),
            };
            let mut len = 0;
            for (i, (data_id, received_ms, payload)) in records.iter().enumerate() {
                let peer = peer_of(i);
                b.push(*data_id, *received_ms, peer, payload);
                len += record_encoded_len(*data_id, *received_ms, peer, payload.len());
                expect.records.push(DataRecord {
                    data_id: *data_id,
                    received_ms: *received_ms,
                    payload: Bytes::copy_from_slice(payload),
                    peer_uid: peer.uid,
                    peer_pid: peer.pid.map(|p| p as u32),
                });
            }
            assert_eq!(b.records(), records.len());
            assert_eq!(b.records_len(), len);
            let frame = b.finish(seq);
            assert_eq!(frame.to_vec(), codec_frame(&expect), "seq {seq}");
            assert_eq!(DataBatch::decode(frame_body(&frame)).unwrap(), expect);
        }
    }
}

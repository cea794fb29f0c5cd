//! The on-disk form of one spooled batch (one log entry).
//!
//! ```text
//! header (8 bytes)   body_len: u32 LE | crc: u32 LE   crc = CRC-32 (IEEE) of body_len bytes ++ body
//! body (body_len)    seq: u64 LE | data_id: u32 LE | n_records: u32 LE
//!                    n_records x ( len: u32 LE | len bytes )
//! ```
//!
//! The checksum covers the length too, so a corrupt length is caught as
//! surely as a corrupt payload. The sequence number is inside the body: a
//! reader knows which seq it expects at each position, so an entry read at
//! the wrong place (a stale tail, a mis-sized skip) is rejected as well.

use bytes::{Buf, Bytes};

use super::SpoolBatch;

/// Bytes before the body: length and checksum.
pub(super) const HEADER_LEN: u64 = 8;
/// Fixed part of the body: seq, data id, record count.
pub(super) const BODY_FIXED_LEN: u64 = 16;
/// Header plus the leading seq: what a positioning scan reads per entry.
pub(super) const PEEK_LEN: usize = (HEADER_LEN + 8) as usize;

/// Encoded size of `batch`, header included.
pub(super) fn encoded_len(batch: &SpoolBatch) -> u64 {
    let records: u64 = batch.records.iter().map(|r| 4 + r.len() as u64).sum();
    HEADER_LEN + BODY_FIXED_LEN + records
}

/// Encodes `batch` as entry `seq` into `buf` (cleared first). The caller has
/// checked that the body length fits in a `u32`.
pub(super) fn encode(seq: u64, batch: &SpoolBatch, buf: &mut Vec<u8>) {
    let total = encoded_len(batch);
    let body_len = u32::try_from(total - HEADER_LEN).expect("caller checks the entry size");
    buf.clear();
    buf.reserve(total as usize);
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&batch.data_id.to_le_bytes());
    buf.extend_from_slice(&(batch.records.len() as u32).to_le_bytes());
    for record in &batch.records {
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(record);
    }
    let crc = checksum(&buf[..4], &buf[HEADER_LEN as usize..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Splits a header into (body_len, crc).
pub(super) fn parse_header(header: &[u8]) -> (u32, u32) {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    (len, crc)
}

/// The seq stored at the start of a body.
pub(super) fn body_seq(body_prefix: &[u8]) -> u64 {
    u64::from_le_bytes(body_prefix[0..8].try_into().expect("8 bytes"))
}

pub(super) fn checksum(len_bytes: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(body);
    hasher.finalize()
}

/// Checks the checksum and the expected seq, then splits the body into a
/// batch without copying the records. `None` means the entry is not valid.
pub(super) fn decode(header: &[u8], body: Bytes, expect_seq: u64) -> Option<SpoolBatch> {
    let (len, crc) = parse_header(header);
    if body.len() as u64 != u64::from(len) || body.len() < BODY_FIXED_LEN as usize {
        return None;
    }
    if checksum(&header[0..4], &body) != crc || body_seq(&body) != expect_seq {
        return None;
    }
    let mut cur = body.slice(8..);
    let data_id = cur.get_u32_le();
    let count = cur.get_u32_le() as usize;
    // Each record costs at least its 4-byte length, which bounds the count.
    if count > cur.remaining() / 4 {
        return None;
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        if cur.remaining() < 4 {
            return None;
        }
        let n = cur.get_u32_le() as usize;
        if cur.remaining() < n {
            return None;
        }
        records.push(cur.split_to(n));
    }
    if cur.has_remaining() {
        return None;
    }
    Some(SpoolBatch { data_id, records })
}

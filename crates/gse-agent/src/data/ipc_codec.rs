//! Frames on the local data-report socket (COMPAT §1.2), big-endian.
//!
//! Upstream (collector -> agent): a 24-byte header `{u32 type, u32 dataid,
//! u32 utctime, u32 bodylen, u32 resv0, u32 resv1}` and `bodylen` bytes.
//! [`IpcCodec`] decodes types 0x09 (dynamic: 24-byte extension, meta area of
//! `metaMaxLen` bytes, payload), 0xC01 and 0xC0C (body = payload) and 0x0A
//! (agent-info request) into [`Frame`]s. Downstream (agent -> collector) it
//! encodes [`DownFrame`]s: an 8-byte header `{u32 type, u32 len}` and the body.
//!
//! Invariants: a frame's body is never buffered past `max_body`, and the
//! decoder reserves no room for what a header claims (the reader grows its
//! buffer as bytes arrive, see `local_socket::reader`); every length is
//! checked against the bytes that hold it before it is used; any error
//! means the stream is out of step and the connection must be closed.
//! `dataid` is passed through as sent, 0 included (libgse never sends
//! `dataid <= 0`, but the SDK does not check): the consumer decides.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// `GSE_TYPE_DYNAMIC`: what every libgse beat sends for normal data.
pub const MSG_TYPE_DYNAMIC: u32 = 0x09;
/// `GSE_TYPE_GET_CONF` / `REPORT_SYNC_CONFIG`: agent-info request, and the
/// type of its reply.
pub const MSG_TYPE_SYNC_CONFIG: u32 = 0x0A;
/// `GSE_TYPE_COMMON` / `MSG_DATA_REPORT`: SDK agent-report data.
pub const MSG_TYPE_COMMON: u32 = 0xC01;
/// `GSE_TYPE_OP` / `MSG_DATA_REPORT_OPS`: libgse "op" data, one connection each.
pub const MSG_TYPE_OP: u32 = 0xC0C;

/// Length of the upstream header.
pub const HEADER_LEN: usize = 24;
/// Length of the 0x09 extension that opens its body.
pub const DYNAMIC_EXT_LEN: usize = 24;
/// Length of a meta entry's `{u32 keyLen, u32 valueLen}` prefix.
pub const META_ENTRY_PREFIX_LEN: usize = 8;
/// Length of the downstream header.
pub const DOWN_HEADER_LEN: usize = 8;
/// Default largest accepted body: the SDK's own 10 MiB message limit, the
/// largest record every hop of the data path carries.
pub const DEFAULT_MAX_BODY: usize = gse_proto::MAX_RECORD_BYTES;

/// Which upstream message type carried a [`Record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// 0x09, with extension and meta area.
    Dynamic,
    /// 0xC01.
    Common,
    /// 0xC0C.
    Op,
}

impl RecordKind {
    /// The wire type value.
    pub fn msg_type(self) -> u32 {
        match self {
            RecordKind::Dynamic => MSG_TYPE_DYNAMIC,
            RecordKind::Common => MSG_TYPE_COMMON,
            RecordKind::Op => MSG_TYPE_OP,
        }
    }
}

/// Who wrote a record to the socket (SO_PEERCRED of its connection); both
/// `None` for records the agent makes itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.uid) {
            (Some(pid), Some(uid)) => write!(f, "pid {pid} uid {uid}"),
            (None, Some(uid)) => write!(f, "uid {uid}"),
            _ => f.write_str("unknown peer"),
        }
    }
}

/// One data record from a collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    /// Channel id, as sent (may be 0; see the module doc).
    pub data_id: u32,
    /// Sender's clock. libgse: unix seconds; the SDK sends truncated
    /// milliseconds, so do not trust it.
    pub utctime: u32,
    /// 0x09 extension `index` (0 from libgse); 0 for other kinds.
    pub index: u64,
    /// 0x09 extension `flags` (0x01 = redundancy, unused); 0 for other kinds.
    pub flags: u32,
    /// 0x09 meta entries in wire order; empty for other kinds.
    pub metas: Vec<(String, String)>,
    /// The record itself, in practice UTF-8 JSON.
    pub payload: Bytes,
    /// The sending process, filled in by the socket (the codec leaves it
    /// unknown).
    pub peer: Peer,
}

/// A decoded upstream frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Record(Record),
    /// 0x0A: the collector wants the agent-info JSON.
    AgentInfoRequest,
}

/// A downstream frame: 8-byte header then `body`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownFrame {
    pub msg_type: u32,
    pub body: Bytes,
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "unknown message type {msg_type:#x} (body length {body_len}); expected 0x9, 0xa, 0xc01 or 0xc0c"
    )]
    UnknownType { msg_type: u32, body_len: u32 },
    #[error(
        "message type {msg_type:#x} body length {body_len} exceeds the limit of {max} bytes \
         (the largest record the data path carries); send smaller records"
    )]
    BodyTooLarge {
        msg_type: u32,
        body_len: u32,
        max: usize,
    },
    #[error(
        "dynamic (0x9) body length {body_len} is shorter than its {DYNAMIC_EXT_LEN}-byte extension"
    )]
    DynamicTooShort { body_len: u32 },
    #[error(
        "dynamic (0x9) metaMaxLen {meta_max_len} exceeds the {available} body bytes after the extension (body length {body_len})"
    )]
    MetaAreaTooLarge {
        meta_max_len: u32,
        available: usize,
        body_len: u32,
    },
    #[error("dynamic (0x9) metaLen {meta_len} exceeds metaMaxLen {meta_max_len}")]
    MetaLenTooLarge { meta_len: u32, meta_max_len: u32 },
    #[error(
        "dynamic (0x9) meta entry {entry} of {meta_count} at offset {offset} needs {needed} bytes but metaLen {meta_len} leaves {remaining}"
    )]
    MetaEntryOverflow {
        entry: u32,
        meta_count: u32,
        offset: usize,
        needed: u64,
        remaining: usize,
        meta_len: u32,
    },
    #[error("dynamic (0x9) meta entry {entry} has a key or value that is not UTF-8")]
    MetaNotUtf8 { entry: u32 },
    #[error("connection closed mid-header: {buffered} of {HEADER_LEN} header bytes")]
    TruncatedHeader { buffered: usize },
    #[error(
        "connection closed mid-frame: {buffered} of {expected} bytes of a type {msg_type:#x} frame"
    )]
    TruncatedFrame {
        msg_type: u32,
        buffered: usize,
        expected: usize,
    },
    #[error("downstream body of {len} bytes does not fit a u32 length")]
    DownBodyTooLarge { len: usize },
    #[error("socket i/o: {0}")]
    Io(#[from] std::io::Error),
}

// === impl IpcCodec ===

/// Decoder for upstream frames, encoder for downstream ones.
#[derive(Clone, Debug)]
pub struct IpcCodec {
    max_body: usize,
}

impl Default for IpcCodec {
    fn default() -> Self {
        IpcCodec::new(DEFAULT_MAX_BODY)
    }
}

/// The fixed upstream header.
#[derive(Clone, Copy, Debug)]
struct Header {
    msg_type: u32,
    data_id: u32,
    utctime: u32,
    body_len: u32,
}

impl Header {
    fn peek(src: &[u8]) -> Option<Header> {
        let mut h = src.get(..HEADER_LEN)?;
        Some(Header {
            msg_type: h.get_u32(),
            data_id: h.get_u32(),
            utctime: h.get_u32(),
            body_len: h.get_u32(),
            // resv0 and resv1 are ignored: always 0 from known clients.
        })
    }
}

impl IpcCodec {
    /// A codec refusing bodies over `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        IpcCodec { max_body }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The whole length (header and body) the frame at the start of `src`
    /// claims, once its header is there.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        Header::peek(src).map(|h| HEADER_LEN + h.body_len as usize)
    }

    /// Checks the header before any of its body is buffered.
    fn check_header(&self, h: &Header) -> Result<(), DecodeError> {
        let known = matches!(
            h.msg_type,
            MSG_TYPE_DYNAMIC | MSG_TYPE_SYNC_CONFIG | MSG_TYPE_COMMON | MSG_TYPE_OP
        );
        if !known {
            return Err(DecodeError::UnknownType {
                msg_type: h.msg_type,
                body_len: h.body_len,
            });
        }
        if h.body_len as usize > self.max_body {
            return Err(DecodeError::BodyTooLarge {
                msg_type: h.msg_type,
                body_len: h.body_len,
                max: self.max_body,
            });
        }
        Ok(())
    }
}

impl Decoder for IpcCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(header) = Header::peek(src) else {
            return Ok(None);
        };
        self.check_header(&header)?;
        let total = HEADER_LEN + header.body_len as usize;
        if src.len() < total {
            // No `reserve` for the claimed body: see the module doc.
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(HEADER_LEN);
        let record = |kind, index, flags, metas, payload| Record {
            kind,
            data_id: header.data_id,
            utctime: header.utctime,
            index,
            flags,
            metas,
            payload,
            peer: Peer::default(),
        };
        let frame = match header.msg_type {
            // A request carries no body; one sent anyway is skipped.
            MSG_TYPE_SYNC_CONFIG => Frame::AgentInfoRequest,
            MSG_TYPE_COMMON => Frame::Record(record(RecordKind::Common, 0, 0, Vec::new(), frame)),
            MSG_TYPE_OP => Frame::Record(record(RecordKind::Op, 0, 0, Vec::new(), frame)),
            _ => {
                let d = decode_dynamic(frame)?;
                Frame::Record(record(
                    RecordKind::Dynamic,
                    d.index,
                    d.flags,
                    d.metas,
                    d.payload,
                ))
            }
        };
        Ok(Some(frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        Err(match Header::peek(src) {
            None => DecodeError::TruncatedHeader {
                buffered: src.len(),
            },
            Some(h) => DecodeError::TruncatedFrame {
                msg_type: h.msg_type,
                buffered: src.len(),
                expected: HEADER_LEN + h.body_len as usize,
            },
        })
    }
}

impl Encoder<DownFrame> for IpcCodec {
    type Error = DecodeError;

    fn encode(&mut self, item: DownFrame, dst: &mut BytesMut) -> Result<(), DecodeError> {
        let len = u32::try_from(item.body.len()).map_err(|_| DecodeError::DownBodyTooLarge {
            len: item.body.len(),
        })?;
        dst.reserve(DOWN_HEADER_LEN + item.body.len());
        dst.put_u32(item.msg_type);
        dst.put_u32(len);
        dst.put_slice(&item.body);
        Ok(())
    }
}

// === 0x09 body ===

struct Dynamic {
    index: u64,
    flags: u32,
    metas: Vec<(String, String)>,
    payload: Bytes,
}

/// Parses a 0x09 body: extension, meta area, payload.
fn decode_dynamic(mut body: Bytes) -> Result<Dynamic, DecodeError> {
    let body_len = body.len() as u32;
    if body.len() < DYNAMIC_EXT_LEN {
        return Err(DecodeError::DynamicTooShort { body_len });
    }
    let index = body.get_u64();
    let flags = body.get_u32();
    let meta_len = body.get_u32();
    let meta_max_len = body.get_u32();
    let meta_count = body.get_u32();
    if meta_max_len as usize > body.len() {
        return Err(DecodeError::MetaAreaTooLarge {
            meta_max_len,
            available: body.len(),
            body_len,
        });
    }
    if meta_len > meta_max_len {
        return Err(DecodeError::MetaLenTooLarge {
            meta_len,
            meta_max_len,
        });
    }
    let metas = decode_metas(&body[..meta_len as usize], meta_count)?;
    body.advance(meta_max_len as usize);
    Ok(Dynamic {
        index,
        flags,
        metas,
        payload: body,
    })
}

/// Reads `meta_count` `{u32 keyLen, u32 valueLen, key, value}` entries, all
/// inside `area` (the first `metaLen` bytes of the meta area).
fn decode_metas(area: &[u8], meta_count: u32) -> Result<Vec<(String, String)>, DecodeError> {
    // Each entry takes at least its prefix, so `area` bounds the count.
    let cap = (meta_count as usize).min(area.len() / META_ENTRY_PREFIX_LEN);
    let mut metas = Vec::with_capacity(cap);
    let mut offset = 0usize;
    for entry in 0..meta_count {
        let mut rest = &area[offset..];
        let overflow = |needed: u64| DecodeError::MetaEntryOverflow {
            entry,
            meta_count,
            offset,
            needed,
            remaining: area.len() - offset,
            meta_len: area.len() as u32,
        };
        if rest.len() < META_ENTRY_PREFIX_LEN {
            return Err(overflow(META_ENTRY_PREFIX_LEN as u64));
        }
        let key_len = rest.get_u32() as usize;
        let value_len = rest.get_u32() as usize;
        let needed = META_ENTRY_PREFIX_LEN as u64 + key_len as u64 + value_len as u64;
        if key_len as u64 + value_len as u64 > rest.len() as u64 {
            return Err(overflow(needed));
        }
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| DecodeError::MetaNotUtf8 { entry })
        };
        let key = text(&rest[..key_len])?;
        let value = text(&rest[key_len..key_len + value_len])?;
        metas.push((key, value));
        offset += needed as usize;
    }
    Ok(metas)
}

#[cfg(test)]
mod tests;

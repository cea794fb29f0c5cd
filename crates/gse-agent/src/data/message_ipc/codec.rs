//! The plugin-message frames (COMPAT §1.3): a 28-byte big-endian header
//! (magic `0xDEADBEEF`, type, version 6, sequence, whole length, two
//! reserved words) and a body; [`MessageCodec`] bounds the whole length.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// First four bytes of every frame.
pub const MAGIC: u32 = 0xDEAD_BEEF;
/// Protocol version this agent speaks.
pub const VERSION: u16 = 6;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 28;
/// Plugin -> agent keepalive.
pub const KEEPALIVE_REQ: u16 = 0x9006;
/// Agent -> plugin keepalive answer.
pub const KEEPALIVE_RESP: u16 = 0x9007;
/// Agent -> plugin dispatched message.
pub const DISPATCH_MESSAGE: u16 = 0x9008;
/// Plugin -> agent message for the server.
pub const RESPOND_MESSAGE: u16 = 0x900a;
/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    pub proto_type: u16,
    pub version: u16,
    pub sequence: u64,
    /// Whole frame, header included.
    pub length: u32,
    pub reserved0: u32,
    pub reserved1: u32,
}

/// One frame: header and body (`length - 28` bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFrame {
    pub header: MessageHeader,
    pub body: Bytes,
}

impl MessageFrame {
    /// A frame of `proto_type` with `body`; length and version filled in,
    /// reserved fields 0.
    pub fn new(proto_type: u16, sequence: u64, body: Bytes) -> Self {
        MessageFrame {
            header: MessageHeader {
                proto_type,
                version: VERSION,
                sequence,
                length: (HEADER_LEN + body.len()) as u32,
                reserved0: 0,
                reserved1: 0,
            },
            body,
        }
    }
}

/// Why a byte stream is not valid plugin-message frames.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(
        "bad magic 0x{0:08x} (expected 0xdeadbeef): the peer does not speak the plugin-message protocol"
    )]
    BadMagic(u32),
    #[error("frame length {0} is shorter than the 28-byte header")]
    TooShort(u32),
    #[error("frame of {len} bytes is over the limit of {max} (plugin.max_message_bytes)")]
    TooLarge { len: u32, max: u32 },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// tokio codec for [`MessageFrame`]s, bounded by a total frame size.
#[derive(Clone, Debug)]
pub struct MessageCodec {
    max: u32,
}

impl MessageCodec {
    pub fn new(max_frame_bytes: u32) -> Self {
        MessageCodec {
            max: max_frame_bytes,
        }
    }

    /// The whole length the frame at the start of `src` claims, once its
    /// header is there.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        let field = src.get(16..20)?;
        Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]) as usize)
    }
}

/// Parses the first [`HEADER_LEN`] bytes of `buf`.
pub fn parse_header(mut buf: &[u8]) -> Result<MessageHeader, MessageError> {
    let magic = buf.get_u32();
    if magic != MAGIC {
        return Err(MessageError::BadMagic(magic));
    }
    Ok(MessageHeader {
        proto_type: buf.get_u16(),
        version: buf.get_u16(),
        sequence: buf.get_u64(),
        length: buf.get_u32(),
        reserved0: buf.get_u32(),
        reserved1: buf.get_u32(),
    })
}

impl Decoder for MessageCodec {
    type Item = MessageFrame;
    type Error = MessageError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<MessageFrame>, MessageError> {
        if src.len() < 4 {
            return Ok(None);
        }
        // Check the magic as soon as it is there: a stranger is cut off at once.
        let magic = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if magic != MAGIC {
            return Err(MessageError::BadMagic(magic));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(&src[..HEADER_LEN])?;
        if (header.length as usize) < HEADER_LEN {
            return Err(MessageError::TooShort(header.length));
        }
        if header.length > self.max {
            return Err(MessageError::TooLarge {
                len: header.length,
                max: self.max,
            });
        }
        let total = header.length as usize;
        if src.len() < total {
            // No `reserve` for what the header claims: the reader grows the
            // buffer as bytes arrive (`local_socket::reader`).
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(total - HEADER_LEN).freeze();
        Ok(Some(MessageFrame { header, body }))
    }
}

impl Encoder<MessageFrame> for MessageCodec {
    type Error = MessageError;

    fn encode(&mut self, f: MessageFrame, dst: &mut BytesMut) -> Result<(), MessageError> {
        let h = f.header;
        dst.reserve(HEADER_LEN + f.body.len());
        dst.put_u32(MAGIC);
        dst.put_u16(h.proto_type);
        dst.put_u16(h.version);
        dst.put_u64(h.sequence);
        dst.put_u32((HEADER_LEN + f.body.len()) as u32);
        dst.put_u32(h.reserved0);
        dst.put_u32(h.reserved1);
        dst.extend_from_slice(&f.body);
        Ok(())
    }
}

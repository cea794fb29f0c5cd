//! Frame layout and its tokio codec.
//!
//! ```text
//! offset size field
//!  0     2    magic      0x4753 ("GS")
//!  2     1    version    FRAME_VERSION
//!  3     1    flags      reserved, 0
//!  4     2    msg_type   MsgType
//!  6     2    reserved   0
//!  8     8    stream_id  correlates requests, answers and streams
//! 16     4    body_len   bytes of protobuf body that follow
//! ```
//! All integers are big-endian. A frame whose magic or version is wrong, or
//! whose body is longer than the codec's limit, is an error that closes the
//! connection: the peer is not speaking our protocol, and nothing after the
//! bad header can be trusted.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// First two bytes of every frame.
pub const FRAME_MAGIC: u16 = 0x4753;
/// Version of the frame header layout.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 20;
/// Default limit on one frame's body; larger frames are refused.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// Which message a frame's body holds. Numbers are part of the wire contract:
/// never reuse one. Each is in its family's block ([`crate::MsgFamily`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    Register,
    RegisterAck,
    Heartbeat,
    HeartbeatAck,
    Goodbye,
    LinkError,
    /// Node -> agent: move when idle (K2).
    HandOver,
    /// Agent -> node: idle now, ready to move.
    HandOverReady,
    /// Enrollment of a new agent (`gse-agent join`).
    EnrollHello,
    EnrollHelloAck,
    EnrollRequest,
    EnrollAnswer,
    RunScript,
    CancelTask,
    TaskOutput,
    TaskStatus,
    // File transfer (file.proto): agent link 0x200-0x27f (File), peer link 0x280-0x2ff (Peer).
    FileManifestRequest,
    FileManifest,
    FileStart,
    PeerSet,
    FileProgress,
    CancelTransfer,
    PieceRequest,
    PieceData,
    PeerHello,
    PeerHelloAck,
    Have,
    // Plugin management (proc.proto): agent link 0x300-0x37f (Proc).
    ProcOperate,
    ProcOperateResult,
    ProcStatusReport,
    ProcAlarm,
    // Plugin messages (message.proto): agent link 0x380-0x3ff (PluginMessage).
    PluginMessage,
    PluginMessageAck,
    PluginMessageUp,
    // Data (data.proto): data link 0x400-0x40f (Data), agent link 0x410-0x41f (DataAssign).
    DataHello,
    DataHelloAck,
    DataBatch,
    DataAck,
    /// On the control link: the agent's DataServer changed (D4).
    DataAssign,
    // The node link between server nodes (node.proto): 0x500-0x5ff (Node).
    NodeHello,
    NodeHelloAck,
    NodeToAgent,
    NodeFromAgent,
    NodeUndelivered,
    // A proxy's link upstream (proxy.proto): 0x600-0x6ff (Proxy).
    ProxyHello,
    ProxyHelloAck,
    ProxyOpen,
    ProxyData,
    ProxyClose,
    /// A node asks a proxy to probe a lost agent's host (C11), and its
    /// answer.
    ProxyProbe,
    ProxyProbeResult,
    /// A type this build does not know (a newer peer); relays pass it on.
    Other(u16),
}

impl MsgType {
    pub fn to_u16(self) -> u16 {
        match self {
            MsgType::Register => 1,
            MsgType::RegisterAck => 2,
            MsgType::Heartbeat => 3,
            MsgType::HeartbeatAck => 4,
            MsgType::Goodbye => 5,
            MsgType::LinkError => 6,
            MsgType::HandOver => 7,
            MsgType::HandOverReady => 8,
            MsgType::EnrollHello => 9,
            MsgType::EnrollHelloAck => 0xa,
            MsgType::EnrollRequest => 0xb,
            MsgType::EnrollAnswer => 0xc,
            MsgType::RunScript => 0x100,
            MsgType::CancelTask => 0x101,
            MsgType::TaskOutput => 0x102,
            MsgType::TaskStatus => 0x103,
            MsgType::FileManifestRequest => 0x200,
            MsgType::FileManifest => 0x201,
            MsgType::FileStart => 0x202,
            MsgType::PeerSet => 0x203,
            MsgType::FileProgress => 0x204,
            MsgType::CancelTransfer => 0x205,
            MsgType::PieceRequest => 0x206,
            MsgType::PieceData => 0x207,
            MsgType::PeerHello => 0x280,
            MsgType::PeerHelloAck => 0x281,
            MsgType::Have => 0x282,
            MsgType::ProcOperate => 0x300,
            MsgType::ProcOperateResult => 0x301,
            MsgType::ProcStatusReport => 0x302,
            MsgType::ProcAlarm => 0x303,
            MsgType::PluginMessage => 0x380,
            MsgType::PluginMessageAck => 0x381,
            MsgType::PluginMessageUp => 0x382,
            MsgType::DataHello => 0x400,
            MsgType::DataHelloAck => 0x401,
            MsgType::DataBatch => 0x402,
            MsgType::DataAck => 0x403,
            MsgType::DataAssign => 0x410,
            MsgType::NodeHello => 0x500,
            MsgType::NodeHelloAck => 0x501,
            MsgType::NodeToAgent => 0x502,
            MsgType::NodeFromAgent => 0x503,
            MsgType::NodeUndelivered => 0x504,
            MsgType::ProxyHello => 0x600,
            MsgType::ProxyHelloAck => 0x601,
            MsgType::ProxyOpen => 0x602,
            MsgType::ProxyData => 0x603,
            MsgType::ProxyClose => 0x604,
            MsgType::ProxyProbe => 0x605,
            MsgType::ProxyProbeResult => 0x606,
            MsgType::Other(n) => n,
        }
    }

    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => MsgType::Register,
            2 => MsgType::RegisterAck,
            3 => MsgType::Heartbeat,
            4 => MsgType::HeartbeatAck,
            5 => MsgType::Goodbye,
            6 => MsgType::LinkError,
            7 => MsgType::HandOver,
            8 => MsgType::HandOverReady,
            9 => MsgType::EnrollHello,
            0xa => MsgType::EnrollHelloAck,
            0xb => MsgType::EnrollRequest,
            0xc => MsgType::EnrollAnswer,
            0x100 => MsgType::RunScript,
            0x101 => MsgType::CancelTask,
            0x102 => MsgType::TaskOutput,
            0x103 => MsgType::TaskStatus,
            0x200 => MsgType::FileManifestRequest,
            0x201 => MsgType::FileManifest,
            0x202 => MsgType::FileStart,
            0x203 => MsgType::PeerSet,
            0x204 => MsgType::FileProgress,
            0x205 => MsgType::CancelTransfer,
            0x206 => MsgType::PieceRequest,
            0x207 => MsgType::PieceData,
            0x280 => MsgType::PeerHello,
            0x281 => MsgType::PeerHelloAck,
            0x282 => MsgType::Have,
            0x300 => MsgType::ProcOperate,
            0x301 => MsgType::ProcOperateResult,
            0x302 => MsgType::ProcStatusReport,
            0x303 => MsgType::ProcAlarm,
            0x380 => MsgType::PluginMessage,
            0x381 => MsgType::PluginMessageAck,
            0x382 => MsgType::PluginMessageUp,
            0x400 => MsgType::DataHello,
            0x401 => MsgType::DataHelloAck,
            0x402 => MsgType::DataBatch,
            0x403 => MsgType::DataAck,
            0x410 => MsgType::DataAssign,
            0x500 => MsgType::NodeHello,
            0x501 => MsgType::NodeHelloAck,
            0x502 => MsgType::NodeToAgent,
            0x503 => MsgType::NodeFromAgent,
            0x504 => MsgType::NodeUndelivered,
            0x600 => MsgType::ProxyHello,
            0x601 => MsgType::ProxyHelloAck,
            0x602 => MsgType::ProxyOpen,
            0x603 => MsgType::ProxyData,
            0x604 => MsgType::ProxyClose,
            0x605 => MsgType::ProxyProbe,
            0x606 => MsgType::ProxyProbeResult,
            n => MsgType::Other(n),
        }
    }
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub msg_type: MsgType,
    pub flags: u8,
    pub stream_id: u64,
    pub body_len: u32,
}

/// One decoded frame: its header and its still-encoded body.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub msg_type: MsgType,
    pub stream_id: u64,
    pub body: Bytes,
}

impl Frame {
    /// Encodes `msg` as the body of a frame of type `msg_type`.
    pub fn new(msg_type: MsgType, stream_id: u64, msg: &impl prost::Message) -> Self {
        Frame {
            msg_type,
            stream_id,
            body: Bytes::from(msg.encode_to_vec()),
        }
    }

    /// Decodes the body as `M`; the error names the frame's type.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, FrameError> {
        M::decode(self.body.clone()).map_err(|source| FrameError::Body {
            msg_type: self.msg_type.to_u16(),
            source,
        })
    }
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "bad frame magic 0x{found:04x} (expected 0x{FRAME_MAGIC:04x}): the peer does not speak the gse link protocol"
    )]
    BadMagic { found: u16 },
    #[error(
        "unsupported frame version {found} (this build speaks {FRAME_VERSION}): upgrade the older side"
    )]
    UnsupportedVersion { found: u8 },
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame of type {msg_type} has a body that is not valid protobuf: {source}")]
    Body {
        msg_type: u16,
        source: prost::DecodeError,
    },
    #[error("i/o error on the link: {0}")]
    Io(#[from] std::io::Error),
}

/// tokio codec for [`Frame`]s with a bound on the body size.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> Self {
        FrameCodec { max_body }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_BODY)
    }
}

/// Parses a header from the first [`HEADER_LEN`] bytes of `buf`.
pub fn parse_header(mut buf: &[u8]) -> Result<FrameHeader, FrameError> {
    let magic = buf.get_u16();
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = buf.get_u8();
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let flags = buf.get_u8();
    let msg_type = MsgType::from_u16(buf.get_u16());
    let _reserved = buf.get_u16();
    let stream_id = buf.get_u64();
    let body_len = buf.get_u32();
    Ok(FrameHeader {
        msg_type,
        flags,
        stream_id,
        body_len,
    })
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(&src[..HEADER_LEN])?;
        let len = header.body_len as usize;
        if len > self.max_body {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_body,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame {
            msg_type: header.msg_type,
            stream_id: header.stream_id,
            body,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.body.len();
        if len > self.max_body {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_body,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u16(FRAME_MAGIC);
        dst.put_u8(FRAME_VERSION);
        dst.put_u8(0);
        dst.put_u16(frame.msg_type.to_u16());
        dst.put_u16(0);
        dst.put_u64(frame.stream_id);
        dst.put_u32(len as u32);
        dst.extend_from_slice(&frame.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Heartbeat;
    use prost::Message;

    fn encoded(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buf).unwrap();
        buf
    }

    #[test]
    fn every_known_type_keeps_its_number() {
        for n in (1..=8)
            .chain(0x100..=0x103)
            .chain(0x200..=0x207)
            .chain(0x280..=0x282)
            .chain(0x300..=0x303)
            .chain(0x400..=0x403)
            .chain(0x410..=0x410)
            .chain(0x500..=0x504)
            .chain(0x600..=0x606)
        {
            let t = MsgType::from_u16(n);
            assert!(!matches!(t, MsgType::Other(_)), "type {n:#x} is not named");
            assert_eq!(t.to_u16(), n);
        }
        assert_eq!(MsgType::from_u16(0x208), MsgType::Other(0x208));
    }

    #[test]
    fn round_trip_keeps_type_stream_and_body() {
        let hb = Heartbeat {
            seq: 7,
            cpu_percent: 1.5,
            ..Default::default()
        };
        let mut buf = encoded(Frame::new(MsgType::Heartbeat, 42, &hb));
        assert_eq!(buf.len(), HEADER_LEN + hb.encode_to_vec().len());
        let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.msg_type, MsgType::Heartbeat);
        assert_eq!(frame.stream_id, 42);
        assert_eq!(frame.decode::<Heartbeat>().unwrap(), hb);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_input_waits_for_more() {
        let full = encoded(Frame::new(
            MsgType::Goodbye,
            1,
            &crate::link::Goodbye {
                reason: "x".into(),
                ..Default::default()
            },
        ));
        let mut codec = FrameCodec::default();
        for cut in [0, 5, HEADER_LEN, full.len() - 1] {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(codec.decode(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_magic_version_and_oversize_are_errors() {
        let mut buf = encoded(Frame::new(MsgType::Heartbeat, 0, &Heartbeat::default()));
        buf[0] = 0;
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::BadMagic { .. })
        ));

        let mut buf = encoded(Frame::new(MsgType::Heartbeat, 0, &Heartbeat::default()));
        buf[2] = 9;
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::UnsupportedVersion { found: 9 })
        ));

        let big = Frame {
            msg_type: MsgType::Other(999),
            stream_id: 0,
            body: Bytes::from(vec![0u8; 100]),
        };
        let mut buf = encoded(big);
        let err = FrameCodec::new(10).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 100, max: 10 }));
    }

    #[test]
    fn unknown_types_survive_as_other() {
        let mut buf = encoded(Frame {
            msg_type: MsgType::Other(0x7001),
            stream_id: 3,
            body: Bytes::from_static(b"opaque"),
        });
        let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.msg_type, MsgType::Other(0x7001));
        assert_eq!(&frame.body[..], b"opaque");
    }
}

//! The gse wire contract.
//!
//! Every connection between gse processes (agent <-> server, later proxy and
//! peer links) carries [`Frame`]s: a fixed 20-byte header ([`FrameHeader`])
//! followed by a protobuf body. Start reading at [`frame`]; the generated
//! message types live in [`link`], and [`MsgType`] names which body a frame
//! carries. The header alone is enough to route a frame, so relays never
//! decode (and so never strip unknown fields from) bodies they forward.
//!
//! This crate does no I/O and knows nothing of TLS; see `gse-core::tls`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod frame;

pub use frame::{Frame, FrameCodec, FrameError, FrameHeader, MsgType};

/// Messages of the agent link (`proto/gse/link/v1/link.proto`).
pub mod link {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/gse.link.v1.rs"));
}

/// Version of the agent link protocol this build speaks; sent in `Register`.
pub const LINK_PROTOCOL_VERSION: u32 = 1;

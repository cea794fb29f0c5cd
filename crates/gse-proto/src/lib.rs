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

impl link::ProcSpec {
    /// The commands an agent may run for a plugin, each with its API field
    /// name (the dangerous-operation check names the one that matched).
    pub fn control_commands(&self) -> [(&'static str, &str); 6] {
        [
            ("spec.control.start_cmd", &self.start_cmd),
            ("spec.control.stop_cmd", &self.stop_cmd),
            ("spec.control.restart_cmd", &self.restart_cmd),
            ("spec.control.reload_cmd", &self.reload_cmd),
            ("spec.control.kill_cmd", &self.kill_cmd),
            ("spec.control.version_cmd", &self.version_cmd),
        ]
    }
}

/// Version of the agent link protocol this build speaks; sent in `Register`.
pub const LINK_PROTOCOL_VERSION: u32 = 1;

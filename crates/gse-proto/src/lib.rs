//! The gse wire contract.
//!
//! Every connection between gse processes (agent <-> server, later proxy and
//! peer links) carries [`Frame`]s: a fixed 20-byte header ([`FrameHeader`])
//! followed by a protobuf body. Start reading at [`frame`]; the generated
//! message types live in [`link`]. [`MsgType`] names which body a frame
//! carries and [`MsgFamily`] which part of the protocol owns it (roles
//! take frames by family). The header alone is enough to route a frame, so
//! relays never decode (and so never strip unknown fields from) bodies they
//! forward.
//!
//! This crate does no I/O and knows nothing of TLS; see `gse-core::tls`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod family;
pub mod frame;

pub use family::MsgFamily;
pub use frame::{Frame, FrameCodec, FrameError, FrameHeader, MsgType};

/// Messages of the agent link (`proto/gse/link/v1/link.proto`).
pub mod link {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/gse.link.v1.rs"));
}

/// `PluginMessageAck.code` (message.proto): what became of a plugin message.
pub mod plugin_message {
    /// Written to the plugin's connections.
    pub const DELIVERED: u32 = 0;
    /// No connection of the plugin (that may speak for it) is open on the
    /// agent, or the agent has no plugin-message socket.
    pub const NOT_CONNECTED: u32 = 1;
    /// The plugin's connections are not reading (their queues are full).
    pub const UNREACHABLE: u32 = 2;
    /// The message was not valid (names too long, does not decode).
    pub const BAD_MESSAGE: u32 = 3;
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
/// 2: the agent follows `HandOver` (K2) when idle.
pub const LINK_PROTOCOL_VERSION: u32 = 2;

/// The first agent link protocol version whose agents follow `HandOver`;
/// older agents ignore it.
pub const HANDOVER_PROTOCOL_VERSION: u32 = 2;

/// Largest record a collector may send on the agent's local data socket, in
/// body bytes of one frame (so at least its payload): the SDK's own 10 MiB
/// message limit (COMPAT §1.2). One number for every hop of the data path:
/// the socket refuses a larger frame (closing the connection, with an ERROR
/// naming this limit), the batcher puts a record this large in a batch of
/// its own, and every DataServer takes such a batch ([`MAX_BATCH_BYTES`]),
/// so a record the socket accepted is never dropped for its size later.
pub const MAX_RECORD_BYTES: usize = 10 << 20;

/// What a `DataBatch` body adds around its records at most, per batch: the
/// seq field, and one record's key, length, data id, receive time and
/// sender fields (about 50 bytes; the rest is room).
pub const BATCH_FRAMING_BYTES: usize = 1024;

/// Largest `DataBatch` body an agent sends: one [`MAX_RECORD_BYTES`] record
/// with its framing. The batcher never cuts a larger one, and a DataServer's
/// `data.max_batch_bytes` may not be set below it.
pub const MAX_BATCH_BYTES: usize = MAX_RECORD_BYTES + BATCH_FRAMING_BYTES;

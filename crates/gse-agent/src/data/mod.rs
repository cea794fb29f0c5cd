//! The agent's local data-report socket (COMPAT §1.1-1.2): collectors
//! (libgse beats, the SDK's agent-report) connect to a unix socket and send
//! framed records; the agent answers agent-info requests on the same link.
//!
//! Start at [`ipc_server::IpcServer`]: it accepts connections, decodes frames
//! with [`ipc_codec::IpcCodec`] and hands every [`ipc_codec::Record`] to a
//! bounded channel. What happens to records after that (batching, the spool,
//! the upstream DataServer) is not here. The plugin-message socket (COMPAT
//! §1.3, magic `0xDEADBEEF`) is a different protocol and is not handled here.

pub mod agent_info;
pub mod ipc_codec;
#[cfg(unix)]
pub mod ipc_server;
pub mod spool;

#[cfg(test)]
mod test_frames;

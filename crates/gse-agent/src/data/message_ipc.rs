//! The plugin-message socket (COMPAT §1.3): hosted plugins built on the
//! GSE SDK (and bkmonitorbeat's tenant client) connect to
//! `ipc.state.message` and speak 28-byte big-endian headers with magic
//! `0xDEADBEEF`, version 6.
//!
//! Start at [`MessageServer::start`] (or [`MessageServer::bind`]), then
//! [`MessageServer::run`]. A keepalive (0x9006) is answered with 0x9007
//! carrying the agent's identity and status (`{agent_id, version,
//! cloud_id, run_mode, status_code, status}`), echoing the request's
//! sequence; the SDK counts itself authorised after the first one. Messages
//! both ways (the server's 0x9008 to a plugin, a plugin's 0x900a to the
//! server) go through the [`MessageHub`], and only for connections whose
//! peer may speak for a plugin (root, the agent's user,
//! `plugin.message_users`): the socket is open to every local user, and
//! none of them may pose as a plugin. A bad magic, a length under 28 or
//! over `plugin.max_message_bytes` closes that connection only. Frames are
//! [`MessageCodec`].
//!
//! The socket is open to every local user (plugins run as other users),
//! who are not trusted, so what they hold is bounded as on the data socket
//! (`local_socket`): at most `plugin.max_message_connections` at once
//! (further ones wait in the listen backlog) and
//! `plugin.max_message_connections_per_uid` of one non-root user (further
//! ones are closed at once); unfinished large frames only within a budget;
//! and a connection that completes no frame for [`IDLE_TIMEOUT`] (20
//! keepalive periods) is closed. Replies wait unwritten up to
//! [`MAX_PENDING_REPLIES`] bytes: past that, decoding stops until they are
//! written, so pipelined keepalives from a client that never reads cannot
//! grow the agent. `plugin.message_ipc_links` are made at start and removed
//! at stop.

pub use self::codec::*;
pub use self::hub::{MessageHub, Speakers};
#[cfg(unix)]
pub use self::server::*;

mod codec;
mod hub;
#[cfg(unix)]
mod server;

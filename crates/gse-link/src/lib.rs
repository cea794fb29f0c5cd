//! gse-link: how gse processes reach each other, written once.
//!
//! Every link of the platform (agent <-> node, agent <-> DataServer, agent
//! <-> peer, and next node <-> node and proxy) is TCP, then mutual TLS,
//! then gse-proto frames starting with a hello. This crate holds the
//! mechanism; the links keep only what their hello says and what they do
//! after it.
//! - [`accept`]: a listener's loop. Start at [`accept::Acceptor`]: caps on
//!   connections still in their handshake ([`limits`]), descriptor
//!   back-off when accept fails, refusals logged once per burst, the TLS
//!   handshake within a deadline and explained when it fails.
//! - [`dial`]: the other side. Start at [`dial::Dialer`]: resolve, bind,
//!   connect within a timeout (keepalive where asked), TLS with the server
//!   name; failures classified ([`net_hint`]) and explained. Reconnects
//!   are paced by [`backoff::Backoff`].
//! - [`session`]: a framed stream's first frame within a deadline and
//!   writes bounded in time.
//! - [`claim`]: the identity a hello claims (`cloud_id:ip`, agent id),
//!   checked against the peer's certificate and the pins in the store; one
//!   check for every hello that claims one.
//!
//! - [`proxy`]: the proxy link's hello, channels and frames (issue 12),
//!   for the node and gse-proxy alike.
//!
//! What a hello carries, and what a link does once it is up, is its role's
//! (gse-server `role::link`, `role::data`; gse-agent `link`, `data`,
//! `file::peer`). The TLS material and its explanations are gse-core's
//! (`gse_core::tls`); frame types are gse-proto's.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod accept;
pub mod backoff;
pub mod claim;
pub mod dial;
pub mod limits;
pub mod net_hint;
pub mod probe;
pub mod proxy;
pub mod session;

pub use accept::{AcceptNames, Accepted, Acceptor, AcceptorParts};
pub use backoff::Backoff;
pub use dial::{DialError, Dialer, DialerParts};
pub use limits::{CapNames, ConnLimits, ConnPermit};

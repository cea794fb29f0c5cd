//! gse-core: the concepts every gse crate shares.
//!
//! - [`identity`]: how an agent is named (`cloud_id:ip`, or a real agent id).
//! - [`tls`]: the one mutual-TLS loader for every link, and plain-language
//!   explanations of certificate mismatches (K6).
//! - [`certs`]: making a CA and the server, agent and proxy certificates.
//! - [`app_secret`], [`private_files`]: secrets at rest (hashed app secrets,
//!   0600/0700 files and dirs).
//! - [`refusals`]: refused connections logged once per burst, not one by one.
//! - [`seams`]: the traits that hide embedded vs distributed implementations
//!   (Registry, StateStore, Sink, Executor); start reading there.
//!
//! No role logic lives here: roles are in gse-server and gse-agent.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod app_secret;
pub mod certs;
pub mod danger;
pub mod file_digest;
pub mod identity;
pub mod logging;
pub mod private_files;
pub mod refusals;
pub mod rlimit;
pub mod seams;
pub mod task;
pub mod telemetry;
pub mod tls;

pub use identity::{AgentKey, AgentRef};

/// Version string of this build, reported by agents and servers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the unix epoch, the unit of every timestamp the API
/// returns.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

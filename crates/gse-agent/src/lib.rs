//! gse-agent: the program on every managed host (C1).
//!
//! Start at [`Agent::run`]: it loads its identity ([`identity`]), then keeps
//! one long-lived mutual-TLS link to its upstream node ([`link`]) with
//! register, heartbeats carrying its own cpu/memory ([`stats`]), keepalive,
//! and reconnect with jittered exponential backoff ([`backoff`]). Tasks run
//! through the `Executor` seam; [`executor::ProcessExecutor`] is the real one.
//! Config is [`config::AgentConfig`] (TOML).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod backoff;
pub mod config;
pub mod executor;
pub mod identity;
pub mod link;
pub mod stats;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;

/// A configured agent, ready to run.
pub struct Agent {
    config: Arc<AgentConfig>,
    identity: identity::AgentIdentity,
}

impl Agent {
    /// Loads the agent's identity (creating its agent id on first start).
    pub fn new(config: AgentConfig) -> Result<Self, identity::IdentityError> {
        let identity = identity::AgentIdentity::load(&config)?;
        Ok(Agent {
            config: Arc::new(config),
            identity,
        })
    }

    pub fn agent_id(&self) -> &str {
        &self.identity.agent_id
    }

    /// Runs until `shutdown` is cancelled; then says goodbye upstream.
    pub async fn run(self, shutdown: CancellationToken) {
        link::run(self.config, self.identity, shutdown).await
    }
}

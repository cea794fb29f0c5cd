//! gse-agent: the program on every managed host (C1).
//!
//! Start at [`Agent::run`]: it loads its identity ([`identity`]), then keeps
//! one long-lived mutual-TLS link to its upstream node ([`link`]) with
//! register, heartbeats carrying its own cpu/memory ([`stats`]), keepalive,
//! and reconnect with jittered exponential backoff (dialing and backoff
//! are `gse_link`'s, shared with the data link and P2P). The link
//! hands task frames to the [`task`] runner, which runs processes through
//! the `Executor` seam; [`executor::ProcessExecutor`] is the real one; and
//! file transfer frames to the [`file`] runner (source, target, relay, and
//! a P2P listener serving pieces to other agents). Config is
//! [`config::AgentConfig`] (TOML). Scripts and pushed files are written
//! only through directories [`safe_dir`] opened without following links a
//! local user could plant.
//!
//! `unsafe` is denied except in one place: the `pre_exec` hook that switches
//! a child process to the task's user (`executor/unix.rs`, with its SAFETY
//! argument).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
pub mod data;
pub mod executor;
pub mod file;
pub mod identity;
pub mod join;
pub mod link;
pub mod plugin;
pub mod safe_dir;
pub mod snapshot;
pub mod stats;
pub mod task;
pub mod watchdog;

use std::sync::Arc;

use gse_core::seams::Executor;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;

/// A configured agent, ready to run.
pub struct Agent {
    config: Arc<AgentConfig>,
    identity: identity::AgentIdentity,
    executor: Arc<dyn Executor>,
    /// Why the watchdog started this worker again, if it did.
    restart: Option<watchdog::Restart>,
}

impl Agent {
    /// Loads the agent's identity (creating its agent id on first start).
    pub fn new(config: AgentConfig) -> Result<Self, identity::IdentityError> {
        let identity = identity::AgentIdentity::load(&config)?;
        Ok(Agent {
            config: Arc::new(config),
            identity,
            executor: Arc::new(executor::ProcessExecutor),
            restart: None,
        })
    }

    /// This worker was restarted by the watchdog for `restart`: its first
    /// session's heartbeats say so.
    pub fn with_restart(mut self, restart: Option<watchdog::Restart>) -> Self {
        self.restart = restart;
        self
    }

    /// Runs tasks through `executor` instead of real processes (simulations).
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = executor;
        self
    }

    pub fn agent_id(&self) -> &str {
        &self.identity.agent_id
    }

    /// Runs until `shutdown` is cancelled; then says goodbye upstream and
    /// spools the data still in memory. Fails only if the data path cannot
    /// start (socket in use, spool dir not writable, TLS files).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), data::DataError> {
        #[cfg(unix)]
        let data = Some(Arc::new(
            data::start(&self.config, &self.identity, shutdown.clone()).await?,
        ));
        #[cfg(not(unix))]
        let data: Option<Arc<data::DataPlane>> = None;
        if let Some(data) = &data {
            tokio::spawn(snapshot::run(
                snapshot::SnapshotTask::new(&self.config.data, data),
                shutdown.clone(),
            ));
        }
        link::run(
            self.config,
            self.identity,
            self.executor,
            data.clone(),
            self.restart,
            shutdown,
        )
        .await;
        if let Some(data) = data {
            data.finished().await;
        }
        Ok(())
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
#[cfg(unix)]
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}

/// Ctrl-C only; running as a Windows service is not implemented yet.
#[cfg(not(unix))]
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

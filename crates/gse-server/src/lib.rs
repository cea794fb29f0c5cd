//! gse-server: every server role of the platform, in one process or spread
//! over several (`--roles`).
//!
//! Start reading at [`node::Node`], which builds the seams (state store,
//! registry) from [`config::ServerConfig`] and starts the roles, one
//! builder per role under `node/`:
//! - [`role::link`]: holds agent connections over mutual TLS, registration,
//!   heartbeats, liveness (C3, K3, K6, K7);
//! - [`role::api`]: the HTTP API upper systems call (C6, A1..A3);
//! - [`role::alarm`]: lost-connection and later other alarms, to a JSON-lines
//!   log and a webhook (C7, K4);
//! - [`role::message`]: plugin messages between upper systems and the
//!   agents' hosted plugins (COMPAT §1.3).
//!
//! [`secret_cache`] checks secrets (app secrets, plugin-message slot
//! tokens) against their stored hashes; [`webhook`] POSTs JSON to upper
//! systems with bounded retries (alarms, plugin messages).
//!
//! The embedded state store is in [`store`]; `quickstart` starts this node for
//! `gse_launch::quickstart`, which adds local agents for a first look. [`fd_budget`] shares the
//! open-files limit among the listeners' unauthenticated connections, which
//! each listener caps with `gse_link::limits`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cluster;
pub mod config;
pub mod fd_budget;
pub mod node;
pub mod quickstart;
pub mod reach;
pub mod role;
pub mod secret_cache;
pub mod store;
pub mod webhook;

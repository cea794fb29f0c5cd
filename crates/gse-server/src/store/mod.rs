//! State store implementations behind `gse_core::seams::StateStore`.
//!
//! [`embedded::EmbeddedStore`] is the single-node default: everything in
//! memory, with agent identities, apps, task records (`tasks`), file
//! transfers (`files`), data routes (`routes`), identity pins (`pins`) and
//! raised `agent_lost` alarms (`lost`)
//! persisted to SQLite so that they survive a restart.
//! The Redis store arrives with the cluster work; nothing outside this
//! module and `node` knows which one is in use.

pub mod embedded;
mod files;
mod lost;
mod pins;
mod routes;
mod tasks;

pub use embedded::EmbeddedStore;

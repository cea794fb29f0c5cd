//! Server roles. Each owns one concern and talks to the others only through
//! the seams (state store, registry) and the handles `node` passes it.

pub mod alarm;
pub mod api;
pub mod data;
pub mod file;
pub mod link;
pub mod task;

//! Data routes (D5): which data id goes to which sinks, as upper systems
//! configure it through the route and stream_to APIs (COMPAT.md §2.3).
//!
//! Start at [`RouteService`]: it owns the stream_tos and channels, stores
//! every change in the StateStore and rebuilds the live [`RouteTable`] the
//! data path reads ([`RouteTable::targets`]). [`validate`] reads request
//! parts into the [`model`]. The HTTP side is `role::api::data_routes`; the
//! sinks themselves are in `role::data::sink`.

pub mod error;
mod metrics;
pub mod model;
mod service;
mod table;
pub mod validate;

#[cfg(test)]
mod tests;

pub use error::RouteError;
pub use service::{
    FIRST_ALLOCATED_CHANNEL_ID, FIRST_STREAM_TO_ID, MAX_CHANNELS, MAX_STREAM_TOS, NewChannel,
    RouteService,
};
pub use table::{RouteTable, RouteTarget, SinkCache};

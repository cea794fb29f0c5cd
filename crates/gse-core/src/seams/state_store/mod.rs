//! `StateStore`: what the cluster knows about agents, apps, tasks, file
//! transfers, data routes, identity pins and raised alarms (C12).
//!
//! The store is split by concern, one small trait each ([`AgentStore`],
//! [`AppStore`], [`TaskStore`], [`TransferStore`], [`RouteStore`],
//! [`PinStore`], [`LostAlarmStore`]), so that a role can be given only the
//! concern it uses and a store states what it keeps by what it implements:
//! there are no default methods that fail at runtime. [`StateStore`] is
//! every concern at once (implemented for any type that has them all), and
//! is what a node holds. Every method fails with a [`StoreError`] whose
//! [`StoreErrorKind`] says what the caller can do about it.
//!
//! The embedded store (in gse-server) keeps agents in memory and persists
//! the rest to SQLite; the Redis store shares them between nodes. Both pass
//! [`conformance`].

mod agents;
pub mod conformance;
mod error;
mod lost;
mod pins;
mod routes;
mod tasks;
mod transfers;

pub use agents::{AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, KnownAgent};
pub use error::{StoreError, StoreErrorKind};
pub use lost::{LostAlarm, LostAlarmStore};
pub use pins::{IdentityPin, PinClaim, PinStore};
pub use routes::{ChannelRecord, NewId, RouteStore, StreamToRecord};
pub use tasks::{
    EntryFailure, LogWindow, StoredTask, TaskEntryState, TaskLogChunk, TaskRecord, TaskStore,
    TaskTarget, TaskWrites,
};
pub use transfers::{FileEntryRecord, FileTransferRecord, TransferStore};

/// Every concern trait, anonymously: `use gse_core::seams::state_store::prelude::*;`
/// lets code call any store method on a concrete store (`EmbeddedStore`,
/// `Arc<RedisStore>`) without naming the traits one by one. Code holding
/// `Arc<dyn StateStore>` needs no import.
pub mod prelude {
    pub use super::{
        AgentStore as _, AppStore as _, LostAlarmStore as _, PinStore as _, RouteStore as _,
        StoreKind as _, TaskStore as _, TransferStore as _,
    };
}

/// Which store this is, for logs and metrics.
pub trait StoreKind: Send + Sync {
    /// Short name: "embedded", "redis".
    fn kind(&self) -> &'static str;
}

/// Every concern of the state store: what a node holds as
/// `Arc<dyn StateStore>`. Implemented for any type that implements them all.
pub trait StateStore:
    StoreKind
    + AgentStore
    + AppStore
    + TaskStore
    + TransferStore
    + RouteStore
    + PinStore
    + LostAlarmStore
{
}

impl<T> StateStore for T where
    T: StoreKind
        + AgentStore
        + AppStore
        + TaskStore
        + TransferStore
        + RouteStore
        + PinStore
        + LostAlarmStore
{
}

//! The seams: each a trait with an embedded implementation (single node, the
//! default) and, later, a distributed one (DESIGN.md "Layers and seams").
//!
//! - [`Registry`]: which server nodes exist, their region and load (K1).
//! - [`AgentDirectory`]: which node holds each agent, fenced by epochs.
//! - [`StateStore`]: agents, apps, tasks, transfers, routes, pins and alarms,
//!   one trait per concern (C12).
//! - [`Sink`]: where the DataServer sends a data id's records (D5).
//! - [`Executor`]: how an agent runs a task (T2..T8).
//!
//! Code above a seam holds an `Arc<dyn Trait>` and never learns which
//! implementation it has. The implementations live with their users: the
//! embedded store and sinks in gse-server, the process executor in gse-agent;
//! [`registry::StaticRegistry`] is here because every node uses it.

pub mod directory;
pub mod executor;
pub mod registry;
pub mod sink;
pub mod state_store;

pub use directory::{AgentDirectory, DirectoryError, Epoch, Location, MemoryDirectory};
pub use executor::{ExecOutcome, ExecRequest, Executor, ExitKind, RunAs, truncation_marker};
pub use registry::{DataServerInfo, NodeInfo, Registry, RegistryError, StaticRegistry};
pub use sink::{Batch, Record, Sink, SinkError};
pub use state_store::{
    AgentRecord, AgentStore, AppRecord, AppStore, EntryFailure, HeartbeatUpdate, KnownAgent,
    LogWindow, LostAlarm, LostAlarmStore, PinStore, RouteStore, StateStore, StoreError,
    StoreErrorKind, StoreKind, StoredTask, TaskEntryState, TaskLogChunk, TaskRecord, TaskStore,
    TaskTarget, TaskWrites, TransferStore,
};

//! The API role: the HTTP API upper systems call (C6, A1..A3), in the shapes
//! bk-job, bk-nodeman and bk-monitor expect (COMPAT.md §2).
//!
//! Start reading at [`router`]: every request goes through one handler that
//! resolves an [`endpoint::Endpoint`] from the one table of paths, reads and
//! authenticates the body ([`auth`]), runs the endpoint and wraps the answer
//! in the BlueKing envelope ([`envelope`]). Errors and their codes are in
//! [`error`]. Connections are accepted by [`serve`] (`listener`), which
//! bounds what one client can hold: connection caps within the open-files
//! limit (`gse_link::limits`, `crate::fd_budget`), header and idle timeouts (`conn_io`), refusals
//! logged once per burst. Agent state comes from the [`StateStore`] seam only; script
//! tasks (`tasks`) are handed to the task role ([`TaskService`]), file
//! transfers (`files`) to the file role ([`FileService`]). This role never
//! talks to agents itself.

mod agents;
pub mod auth;
pub(crate) mod body;
pub mod config;
mod conn_io;
mod data_routes;
pub mod endpoint;
pub mod envelope;
pub mod error;
mod file_request;
mod files;
mod listener;
mod messages;
pub mod metrics;
mod nodes;
pub mod openapi;
mod proc_request;
mod procs;
mod push_request;
mod server;
mod snapshot;
mod task_request;
mod tasks;

#[cfg(test)]
mod fake_store;
#[cfg(test)]
mod file_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use gse_core::seams::StateStore;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::role::data::routes::RouteService;
use crate::role::data::snapshot::SnapshotCache;
use crate::role::file::FileService;
use crate::role::proc::ProcService;
use crate::role::task::TaskService;

use crate::secret_cache::VerifiedSecrets;
use gse_core::refusals::RefusalLog;

pub use config::{ApiConfig, AppConfig};
pub use error::ApiError;
pub use listener::serve;
pub use server::router;

/// What the API role needs from the node that runs it.
#[derive(Clone)]
pub struct ApiContext {
    /// Where agent state and registered apps are read from.
    pub store: Arc<dyn StateStore>,
    /// App secrets already checked against their stored hashes.
    pub secrets: Arc<VerifiedSecrets>,
    /// Calls refused for their credentials, logged once per burst.
    pub auth_refusals: Arc<RefusalLog>,
    pub config: ApiConfig,
    /// Rendered at `GET /metrics`; `None` answers 404 there.
    pub metrics: Option<PrometheusHandle>,
    /// Where script tasks go; `None` answers their endpoints with 1000503.
    pub tasks: Option<Arc<TaskService>>,
    /// Where file transfers go; `None` answers their endpoints with 1000503.
    pub files: Option<Arc<FileService>>,
    /// Where plugin process operations go; `None` answers their endpoints
    /// with 1000503.
    pub procs: Option<Arc<ProcService>>,
    /// Where plugin messages go; `None` answers their endpoints with
    /// 1000503.
    pub messages: Option<Arc<crate::role::message::MessageService>>,
    /// Where data routes and stream_tos go; `None` answers their
    /// endpoints with 1000503.
    pub routes: Option<Arc<RouteService>>,
    /// The data role's system snapshots (D3); `None` answers
    /// `get_agent_snapshot` with 1000503.
    pub snapshots: Option<Arc<SnapshotCache>>,
    /// The cluster's nodes (K1): ZooKeeper in a cluster, this node alone
    /// otherwise; `None` answers `list_nodes` with this node unknown.
    pub registry: Option<Arc<dyn gse_core::seams::Registry>>,
}

impl ApiContext {
    /// A context with no roles behind it: every role's endpoints answer
    /// 1000503 until its field is set.
    pub fn new(store: Arc<dyn StateStore>, config: ApiConfig) -> Self {
        ApiContext {
            store,
            secrets: Arc::default(),
            auth_refusals: Arc::new(RefusalLog::new(
                "API calls for their credentials",
                listener::REFUSAL_LOG_WINDOW,
            )),
            config,
            metrics: None,
            tasks: None,
            files: None,
            procs: None,
            messages: None,
            routes: None,
            snapshots: None,
            registry: None,
        }
    }
}

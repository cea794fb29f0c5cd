//! The HTTP API where `[node] roles` selects it, over the work and data
//! roles this node runs and the cluster registry (`list_nodes`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use gse_core::seams::Registry;

use super::common::{Base, bind};
use super::data::DataRoles;
use super::work::WorkRoles;
use crate::config::{Role, ServerConfig};
use crate::role::api::{self, ApiContext};

/// Binds `api.listen` and serves the API; returns the bound address.
pub(super) async fn start(
    config: &ServerConfig,
    base: &mut Base,
    work: &WorkRoles,
    data: &DataRoles,
    registry: Arc<dyn Registry>,
) -> Result<Option<SocketAddr>> {
    if !config.has_role(Role::Api) {
        return Ok(None);
    }
    let listener = bind(config.api.listen, "the HTTP API", "api.listen").await?;
    let addr = listener.local_addr()?;
    let ctx = ApiContext {
        metrics: Some(gse_core::telemetry::metrics_handle()),
        tasks: work.tasks.clone(),
        files: work.files.clone(),
        routes: data.routes.clone(),
        procs: work.procs.clone(),
        messages: work.messages.clone(),
        snapshots: data.snapshots.clone(),
        registry: Some(registry),
        ..ApiContext::new(base.store.clone(), config.api.clone())
    };
    let token = base.shutdown.clone();
    let limits = base.budget.api_limits();
    base.joins.spawn(async move {
        if let Err(e) = api::serve(listener, ctx, limits, token).await {
            tracing::error!(error = %e, "the HTTP API stopped with an error");
        }
    });
    Ok(Some(addr))
}

//! Which endpoint a request is for: the one table of API paths.
//!
//! A path is normalised before lookup: the gateway prefix `/api/bk-gse/prod`
//! is stripped and trailing slashes are dropped (bk-nodeman always sends one,
//! bk-job never does; COMPAT.md §2.0). A new endpoint is a variant, a row in
//! [`ENDPOINTS`] and an arm in [`Endpoint::handle`].

use axum::http::Method;
use serde_json::Value;

use super::ApiContext;
use super::agents;
use super::body::Fields;
use super::data_routes;
use super::error::{ApiError, quoted};
use super::files;
use super::messages;
use super::nodes;
use super::openapi::{OPENAPI_PATH, Shape};
use super::procs;
use super::snapshot;
use super::tasks;

/// Prefix the BlueKing API gateway puts in front of GSE's own paths.
pub const GATEWAY_PREFIX: &str = "/api/bk-gse/prod";

/// An API endpoint: always POST with a JSON body and app credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Legacy v1 `get_agent_status`: liveness by `cloud:ip`.
    GetAgentStatus,
    /// Legacy v1 `get_agent_info`: version and parent by `cloud:ip`.
    GetAgentInfo,
    /// v2 `list_agent_state`, as bk-job and bk-nodeman call it.
    ListAgentState,
    /// v2 `list_agent_info`, as bk-nodeman calls it.
    ListAgentInfo,
    /// Our extension for gsectl: every known agent.
    ListAgents,
    /// v2 `async_execute_script`: start a script task (bk-job).
    ExecuteScript,
    /// v2 `get_execute_script_result`: poll a script task (bk-job).
    GetScriptResult,
    /// v2 `async_terminate_execute_script`: stop a script task (bk-job).
    TerminateScript,
    /// v2 `async_transfer_file`: start a file transfer (bk-job).
    TransferFile,
    /// v2 `get_transfer_file_result`: poll a file transfer (bk-job).
    GetTransferResult,
    /// v2 `async_terminate_transfer_file`: stop a file transfer (bk-job).
    TerminateTransfer,
    /// v2 `async_push_file`: files given by content (bk-cmdb's host identity).
    PushFile,
    /// v2 `async/get_transfer_file_result`: poll a push (bk-cmdb).
    GetPushResult,
    /// v2 `operate_proc_multi`: plugin process operations (bk-nodeman).
    OperateProcMulti,
    /// Legacy single-operation `operate_proc`.
    OperateProc,
    /// v2 `get_proc_operate_result_v2`: poll a process task (bk-nodeman).
    GetProcOperateResult,
    /// v2 `get_proc_status_v2`: plugin status per agent (bk-nodeman).
    GetProcStatus,
    /// v2 `add_route`: register a data id's routes (new id when none given) (D5).
    AddRoute,
    /// v2 `update_route`: add or replace routes of a data id (D5).
    UpdateRoute,
    /// v2 `delete_route`: a whole data id, or named routes of it (D5).
    DeleteRoute,
    /// v2 `query_route`: a data id's routes (D5).
    QueryRoute,
    /// v2 `add_streamto`: register a receiver (Kafka, Redis, file ...) (D5).
    AddStreamTo,
    /// v2 `update_streamto`: change a receiver (D5).
    UpdateStreamTo,
    /// v2 `delete_streamto`: remove an unused receiver (D5).
    DeleteStreamTo,
    /// v2 `query_streamto`: list receivers (D5).
    QueryStreamTo,
    /// `get_agent_snapshot`: the agents' system snapshots of the last
    /// minute (D3; our extension).
    GetAgentSnapshot,
    /// `list_nodes`: the cluster's server nodes and their load (K1; our
    /// extension).
    ListNodes,
    /// v2 `dispatch_message`: a message to a plugin on many agents (COMPAT
    /// §1.3; the GSE SDK's server API, bk-monitor).
    DispatchMessage,
    /// v2 `dispatch_multi_message`: each agent's plugin its own message.
    DispatchMultiMessage,
}

/// Canonical path (no prefix, no trailing slash) of every endpoint.
pub const ENDPOINTS: &[(&str, Endpoint)] = &[
    (
        "/api/c/compapi/v2/gse/get_agent_status",
        Endpoint::GetAgentStatus,
    ),
    (
        "/api/c/compapi/v2/gse/get_agent_info",
        Endpoint::GetAgentInfo,
    ),
    ("/api/v2/cluster/list_agent_state", Endpoint::ListAgentState),
    ("/api/v2/cluster/list_agent_info", Endpoint::ListAgentInfo),
    ("/api/v2/cluster/list_agents", Endpoint::ListAgents),
    ("/api/v2/cluster/list_nodes", Endpoint::ListNodes),
    (
        "/api/v2/cluster/dispatch_message",
        Endpoint::DispatchMessage,
    ),
    (
        "/api/v2/cluster/dispatch_multi_message",
        Endpoint::DispatchMultiMessage,
    ),
    (
        "/api/v2/task/extensions/async_execute_script",
        Endpoint::ExecuteScript,
    ),
    (
        "/api/v2/task/extensions/get_execute_script_result",
        Endpoint::GetScriptResult,
    ),
    (
        "/api/v2/task/extensions/async_terminate_execute_script",
        Endpoint::TerminateScript,
    ),
    (
        "/api/v2/task/extensions/async_transfer_file",
        Endpoint::TransferFile,
    ),
    (
        "/api/v2/task/extensions/get_transfer_file_result",
        Endpoint::GetTransferResult,
    ),
    (
        "/api/v2/task/extensions/async_terminate_transfer_file",
        Endpoint::TerminateTransfer,
    ),
    ("/api/v2/task/async_push_file", Endpoint::PushFile),
    (
        "/api/v2/task/async/get_transfer_file_result",
        Endpoint::GetPushResult,
    ),
    (
        "/api/v2/proc/operate_proc_multi",
        Endpoint::OperateProcMulti,
    ),
    (
        "/api/v2/proc/get_proc_operate_result_v2",
        Endpoint::GetProcOperateResult,
    ),
    ("/api/v2/proc/get_proc_status_v2", Endpoint::GetProcStatus),
    (
        "/api/c/compapi/v2/gse/operate_proc_multi",
        Endpoint::OperateProcMulti,
    ),
    ("/api/c/compapi/v2/gse/operate_proc", Endpoint::OperateProc),
    (
        "/api/c/compapi/v2/gse/operate_proc_v2",
        Endpoint::OperateProc,
    ),
    (
        "/api/c/compapi/v2/gse/get_proc_operate_result_v2",
        Endpoint::GetProcOperateResult,
    ),
    (
        "/api/c/compapi/v2/gse/get_proc_operate_result",
        Endpoint::GetProcOperateResult,
    ),
    (
        "/api/c/compapi/v2/gse/get_proc_status_v2",
        Endpoint::GetProcStatus,
    ),
    (
        "/api/c/compapi/v2/gse/get_proc_status",
        Endpoint::GetProcStatus,
    ),
    ("/api/v2/data/get_proc_status", Endpoint::GetProcStatus),
    ("/api/v2/data/add_route", Endpoint::AddRoute),
    ("/api/v2/data/update_route", Endpoint::UpdateRoute),
    ("/api/v2/data/delete_route", Endpoint::DeleteRoute),
    ("/api/v2/data/query_route", Endpoint::QueryRoute),
    ("/api/v2/data/add_streamto", Endpoint::AddStreamTo),
    ("/api/v2/data/update_streamto", Endpoint::UpdateStreamTo),
    ("/api/v2/data/delete_streamto", Endpoint::DeleteStreamTo),
    ("/api/v2/data/query_streamto", Endpoint::QueryStreamTo),
    (
        "/api/v2/cluster/get_agent_snapshot",
        Endpoint::GetAgentSnapshot,
    ),
    ("/api/c/compapi/v2/gse/config_add_route", Endpoint::AddRoute),
    (
        "/api/c/compapi/v2/gse/config_update_route",
        Endpoint::UpdateRoute,
    ),
    (
        "/api/c/compapi/v2/gse/config_delete_route",
        Endpoint::DeleteRoute,
    ),
    (
        "/api/c/compapi/v2/gse/config_query_route",
        Endpoint::QueryRoute,
    ),
    (
        "/api/c/compapi/v2/gse/config_add_streamto",
        Endpoint::AddStreamTo,
    ),
    (
        "/api/c/compapi/v2/gse/config_update_streamto",
        Endpoint::UpdateStreamTo,
    ),
    (
        "/api/c/compapi/v2/gse/config_delete_streamto",
        Endpoint::DeleteStreamTo,
    ),
    (
        "/api/c/compapi/v2/gse/config_query_streamto",
        Endpoint::QueryStreamTo,
    ),
];

/// What a request is for, once its method and path are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: liveness for load balancers, no credentials.
    Health,
    /// `GET /metrics`: Prometheus text, no credentials.
    Metrics,
    /// `GET /api/openapi.json`: the API's OpenAPI document, no credentials.
    OpenApi,
    Api(Endpoint),
}

// === impl Route ===

impl Route {
    /// Resolves a request line, or says why it cannot be served.
    pub fn parse(method: &Method, raw_path: &str) -> Result<Route, ApiError> {
        let path = normalise(raw_path);
        let not_allowed = |allowed| ApiError::MethodNotAllowed {
            method: quoted(method.as_str()),
            path: path.to_string(),
            allowed,
        };
        let ops = match path {
            "/healthz" => Some(Route::Health),
            "/metrics" => Some(Route::Metrics),
            OPENAPI_PATH => Some(Route::OpenApi),
            _ => None,
        };
        if let Some(route) = ops {
            return match *method {
                Method::GET | Method::HEAD => Ok(route),
                _ => Err(not_allowed("GET")),
            };
        }
        let endpoint = Endpoint::from_path(path).ok_or_else(|| ApiError::UnknownPath {
            path: quoted(raw_path),
        })?;
        if *method != Method::POST {
            return Err(not_allowed("POST with a JSON body"));
        }
        Ok(Route::Api(endpoint))
    }

    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => OPENAPI_PATH,
            Route::Api(endpoint) => endpoint.path(),
        }
    }
}

/// Strips the gateway prefix and any trailing slashes.
fn normalise(path: &str) -> &str {
    let path = match path.strip_prefix(GATEWAY_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    };
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

// === impl Endpoint ===

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        ENDPOINTS.iter().find(|(p, _)| *p == path).map(|(_, e)| *e)
    }

    /// The canonical path, also the metrics label.
    pub fn path(self) -> &'static str {
        ENDPOINTS
            .iter()
            .find(|(_, e)| *e == self)
            .map_or("unknown", |(p, _)| p)
    }

    /// One line on what the endpoint does, for the OpenAPI document.
    pub fn summary(self) -> &'static str {
        match self {
            Endpoint::GetAgentStatus => "Liveness of agents by cloud:ip (v1)",
            Endpoint::GetAgentInfo => "Version and parent of agents by cloud:ip (v1)",
            Endpoint::ListAgentState => "State of agents by agent id (bk-job, bk-nodeman)",
            Endpoint::ListAgentInfo => "Version, parent and status of agents by agent id",
            Endpoint::ListAgents => "Every known agent (gsectl)",
            Endpoint::ExecuteScript => "Start a script task (bk-job)",
            Endpoint::GetScriptResult => "Poll a script task (bk-job)",
            Endpoint::TerminateScript => "Stop a script task (bk-job)",
            Endpoint::TransferFile => "Start a file transfer (bk-job)",
            Endpoint::GetTransferResult => "Poll a file transfer (bk-job)",
            Endpoint::TerminateTransfer => "Stop a file transfer (bk-job)",
            Endpoint::PushFile => "Write files given by content on agents (bk-cmdb)",
            Endpoint::GetPushResult => "Poll a content push (bk-cmdb)",
            Endpoint::OperateProcMulti => "Plugin process operations (bk-nodeman)",
            Endpoint::OperateProc => "One plugin process operation (legacy)",
            Endpoint::GetProcOperateResult => "Poll a process operation task (bk-nodeman)",
            Endpoint::GetProcStatus => "Plugin status per agent (bk-nodeman)",
            Endpoint::AddRoute => "Register a data id's routes",
            Endpoint::UpdateRoute => "Add or replace routes of a data id",
            Endpoint::DeleteRoute => "Delete a data id, or named routes of it",
            Endpoint::QueryRoute => "A data id's routes",
            Endpoint::AddStreamTo => "Register a receiver (Kafka, Redis, file ...)",
            Endpoint::UpdateStreamTo => "Change a receiver",
            Endpoint::DeleteStreamTo => "Remove an unused receiver",
            Endpoint::QueryStreamTo => "List receivers",
            Endpoint::GetAgentSnapshot => "Agents' system snapshots of the last minute",
            Endpoint::ListNodes => "The cluster's server nodes and their load",
            Endpoint::DispatchMessage => "A message to a plugin on many agents",
            Endpoint::DispatchMultiMessage => "Each agent's plugin its own message",
        }
    }

    /// The typed request the endpoint reads and the answer it gives.
    pub fn shape(self) -> Shape {
        match self {
            Endpoint::GetAgentStatus => agents::shape_status_v1(),
            Endpoint::GetAgentInfo => agents::shape_info_v1(),
            Endpoint::ListAgentState => agents::shape_state_v2(),
            Endpoint::ListAgentInfo => agents::shape_info_v2(),
            Endpoint::ListAgents => agents::shape_list(),
            Endpoint::GetAgentSnapshot => snapshot::shape(),
            Endpoint::ListNodes => nodes::shape(),
            Endpoint::AddRoute
            | Endpoint::UpdateRoute
            | Endpoint::DeleteRoute
            | Endpoint::QueryRoute
            | Endpoint::AddStreamTo
            | Endpoint::UpdateStreamTo
            | Endpoint::DeleteStreamTo
            | Endpoint::QueryStreamTo => data_routes::shape(self),
            Endpoint::DispatchMessage => messages::shape_single(),
            Endpoint::DispatchMultiMessage => messages::shape_multi(),
            Endpoint::OperateProcMulti => procs::shape_multi(),
            Endpoint::OperateProc => procs::shape_one(),
            Endpoint::GetProcOperateResult => procs::shape_result(),
            Endpoint::GetProcStatus => procs::shape_status(),
            Endpoint::TransferFile => files::shape_transfer(),
            Endpoint::GetTransferResult => files::shape_result(),
            Endpoint::TerminateTransfer => files::shape_terminate(),
            Endpoint::PushFile => files::shape_push(),
            Endpoint::GetPushResult => files::shape_push_result(),
            Endpoint::ExecuteScript => tasks::shape_execute(),
            Endpoint::GetScriptResult => tasks::shape_result(),
            Endpoint::TerminateScript => tasks::shape_terminate(),
        }
    }

    /// Runs the endpoint on a request authenticated as the app `caller`;
    /// the answer is the envelope's `data`.
    pub async fn handle(
        self,
        ctx: &ApiContext,
        caller: &str,
        body: &Fields,
    ) -> Result<Value, ApiError> {
        match self {
            Endpoint::GetAgentStatus => agents::get_agent_status(ctx, body).await,
            Endpoint::GetAgentInfo => agents::get_agent_info(ctx, body).await,
            Endpoint::ListAgentState => agents::list_agent_state(ctx, body).await,
            Endpoint::ListAgentInfo => agents::list_agent_info(ctx, body).await,
            Endpoint::ListAgents => agents::list_agents(ctx, body).await,
            Endpoint::ListNodes => nodes::list_nodes(ctx).await,
            Endpoint::ExecuteScript => tasks::execute_script(ctx, body).await,
            Endpoint::GetScriptResult => tasks::get_script_result(ctx, body).await,
            Endpoint::TerminateScript => tasks::terminate_script(ctx, body).await,
            Endpoint::TransferFile => files::transfer_file(ctx, caller, body).await,
            Endpoint::GetTransferResult => files::get_transfer_result(ctx, body).await,
            Endpoint::TerminateTransfer => files::terminate_transfer(ctx, body).await,
            Endpoint::PushFile => files::push_file(ctx, caller, body).await,
            Endpoint::GetPushResult => files::get_push_result(ctx, body).await,
            Endpoint::OperateProcMulti => procs::operate_multi(ctx, body).await,
            Endpoint::OperateProc => procs::operate_one(ctx, body).await,
            Endpoint::GetProcOperateResult => procs::operate_result(ctx, body).await,
            Endpoint::GetProcStatus => procs::proc_status(ctx, body).await,
            Endpoint::AddRoute => data_routes::add_route(ctx, body).await,
            Endpoint::UpdateRoute => data_routes::update_route(ctx, body).await,
            Endpoint::DeleteRoute => data_routes::delete_route(ctx, body).await,
            Endpoint::QueryRoute => data_routes::query_route(ctx, body).await,
            Endpoint::AddStreamTo => data_routes::add_streamto(ctx, body).await,
            Endpoint::UpdateStreamTo => data_routes::update_streamto(ctx, body).await,
            Endpoint::DeleteStreamTo => data_routes::delete_streamto(ctx, body).await,
            Endpoint::QueryStreamTo => data_routes::query_streamto(ctx, body).await,
            Endpoint::GetAgentSnapshot => snapshot::get_agent_snapshot(ctx, body).await,
            Endpoint::DispatchMessage => messages::dispatch_message(ctx, body).await,
            Endpoint::DispatchMultiMessage => messages::dispatch_multi_message(ctx, body).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_one_row() {
        // Legacy names are extra rows for the same endpoint; its canonical
        // path (the metrics label) is its first row. A path listed twice
        // for different endpoints fails here.
        for (path, endpoint) in ENDPOINTS {
            assert_eq!(Endpoint::from_path(path), Some(*endpoint), "{path}");
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(*endpoint));
        }
    }

    #[test]
    fn prefix_and_slashes_are_optional() {
        let want = Ok(Route::Api(Endpoint::ListAgentState));
        for p in [
            "/api/v2/cluster/list_agent_state",
            "/api/v2/cluster/list_agent_state/",
            "/api/bk-gse/prod/api/v2/cluster/list_agent_state",
            "/api/bk-gse/prod/api/v2/cluster/list_agent_state/",
        ] {
            assert_eq!(
                Route::parse(&Method::POST, p).map_err(|e| e.code()),
                want.clone(),
                "{p}"
            );
        }
        // The prefix must be a whole path segment.
        assert!(
            Route::parse(
                &Method::POST,
                "/api/bk-gse/prodapi/v2/cluster/list_agent_state"
            )
            .is_err()
        );
        assert_eq!(normalise("/api/bk-gse/prod"), "/");
        assert_eq!(normalise("/"), "/");
    }

    #[test]
    fn methods_are_checked_per_route() {
        assert_eq!(
            Route::parse(&Method::GET, "/healthz/").unwrap(),
            Route::Health
        );
        let code = |m: &Method, p| Route::parse(m, p).unwrap_err().code();
        assert_eq!(code(&Method::POST, "/healthz"), 1000405);
        assert_eq!(code(&Method::GET, "/api/v2/cluster/list_agents"), 1000405);
        assert_eq!(code(&Method::GET, "/nope"), 1000404);
    }
}

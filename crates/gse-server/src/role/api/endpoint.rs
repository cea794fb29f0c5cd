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
use super::error::{ApiError, quoted};
use super::files;
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
];

/// What a request is for, once its method and path are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: liveness for load balancers, no credentials.
    Health,
    /// `GET /metrics`: Prometheus text, no credentials.
    Metrics,
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
            Endpoint::ExecuteScript => tasks::execute_script(ctx, body).await,
            Endpoint::GetScriptResult => tasks::get_script_result(ctx, body).await,
            Endpoint::TerminateScript => tasks::terminate_script(ctx, body).await,
            Endpoint::TransferFile => files::transfer_file(ctx, caller, body).await,
            Endpoint::GetTransferResult => files::get_transfer_result(ctx, body).await,
            Endpoint::TerminateTransfer => files::terminate_transfer(ctx, body).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_one_row() {
        for (path, endpoint) in ENDPOINTS {
            assert_eq!(endpoint.path(), *path);
            assert_eq!(Endpoint::from_path(path), Some(*endpoint));
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

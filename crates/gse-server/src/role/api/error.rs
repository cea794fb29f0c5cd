//! Every way an API call can fail, and its wire form (code, HTTP status).
//!
//! The codes are ours except 1011003, which bk-nodeman reads as "none of the
//! agents is known" (COMPAT.md §2.1); 1011101 (unknown task) is ours in the
//! same range. docs/API.md lists them all.

use axum::http::StatusCode;
use gse_core::identity::IdentityError;
use gse_core::seams::StoreError;

use crate::role::data::routes::RouteError;
use crate::role::file::FileError;
use crate::role::proc::ProcError;
use crate::role::task::TaskError;

/// Envelope code of an unknown task id (ours, in GSE's 1011xxx range of
/// answers).
pub const TASK_NOT_FOUND: i64 = 1011101;

/// Longest piece of caller input quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// Why an API call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "request body is not valid JSON at line {line} column {column}: {reason}; send a JSON object"
    )]
    InvalidJson {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("request body could not be read: {reason}; send the request again")]
    BodyUnreadable { reason: String },
    #[error("request body must be a JSON object, got {got}")]
    BodyNotObject { got: &'static str },
    #[error("{field}: missing; this field is required")]
    MissingField { field: String },
    #[error("{field}: expected {expected}, got {got}")]
    WrongType {
        field: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("{field}: {value:?} is not an IP address")]
    BadIp { field: String, value: String },
    #[error("{field}: {value} is not a cloud id; use an integer >= 0")]
    BadCloudId { field: String, value: String },
    #[error("{field}: {source}")]
    BadAgentId {
        field: String,
        source: IdentityError,
    },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },

    #[error(
        "no credentials found: send the X-Bkapi-Authorization header \
         ({{\"bk_app_code\":..,\"bk_app_secret\":..}}), the X-Bkapi-App-Code and \
         X-Bkapi-App-Secret headers, or bk_app_code and bk_app_secret in the JSON body"
    )]
    NoCredentials,
    #[error(
        "X-Bkapi-Authorization header is not usable: {reason}; send a JSON object with \
         bk_app_code and bk_app_secret"
    )]
    BadAuthorizationHeader { reason: String },
    #[error("app code {app_code:?} is not registered; register it with gse-server apps add")]
    UnknownApp { app_code: String },
    #[error("wrong secret for app {app_code:?}; check bk_app_secret against the registered app")]
    WrongSecret { app_code: String },

    #[error(
        "too many app secret checks are waiting (a flood of wrong secrets?); retry in a few seconds"
    )]
    AuthBusy,

    #[error("no API at {path:?}; see docs/API.md for the list of endpoints")]
    UnknownPath { path: String },
    #[error("/metrics is not served: this node runs without a metrics recorder")]
    MetricsDisabled,
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },

    #[error(
        "request body is over the limit of {limit} bytes (config api.max_body_bytes); split the request"
    )]
    BodyTooLarge { limit: usize },
    #[error(
        "{field} has {count} entries, over the limit of {limit} per call \
         (config api.max_hosts_per_call); split the request"
    )]
    TooManyEntries {
        field: &'static str,
        count: usize,
        limit: usize,
    },

    #[error(
        "{field} has {count} {what}, over the limit of {limit} (config {key}); split the request"
    )]
    OverLimit {
        field: String,
        what: &'static str,
        count: usize,
        limit: usize,
        key: &'static str,
    },

    #[error(
        "request body is over {limit} bytes (config api.preauth_body_limit) and carries its \
         credentials only in the body: send them in the X-Bkapi-Authorization header (or \
         X-Bkapi-App-Code and X-Bkapi-App-Secret) with big requests"
    )]
    PreAuthBodyTooLarge { limit: usize },
    #[error(
        "the answer is over {limit} bytes (config api.max_response_bytes): name fewer agents \
         per call, or ask for less output (a smaller limit)"
    )]
    AnswerTooLarge { limit: usize },
    #[error(
        "request URI is over {limit} bytes; API paths are short and the query string is not read"
    )]
    UriTooLong { limit: usize },
    #[error("request headers are over {bytes} bytes or {count} fields; send smaller headers")]
    HeadersTooLarge { bytes: usize, count: usize },
    #[error("the request is not valid HTTP/1.1; send a POST with a JSON body")]
    BadHttp,
    #[error(
        "no answer within {after:?} (config api.request_timeout); try again, or ask for less at once"
    )]
    Timeout { after: std::time::Duration },
    #[error(
        "too many API connections: at most {limit} at once (config api.max_connections, within \
         the open-files limit less api.fd_reserve and the agent-facing handshake caps); close \
         idle connections or try again later"
    )]
    TooManyConnections { limit: usize },
    #[error(
        "too many API connections from {addr}: at most {limit} at once from one address \
         (config api.max_connections_per_ip); reuse connections or close idle ones"
    )]
    TooManyConnectionsFrom { addr: String, limit: usize },

    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),

    #[error("none of the {asked} requested agents is known to gse")]
    NoAgentFound { asked: usize },

    #[error(
        "task {task_id:?} not found: it was never started, or it is older than task.retention and was pruned"
    )]
    TaskNotFound { task_id: String },
    #[error(
        "this node does not run the task role; send task calls to a node that runs the api and link roles"
    )]
    TasksUnavailable,
    #[error(
        "file transfer {task_id:?} not found: it was never started, or it is older than file.retention and was pruned"
    )]
    TransferNotFound { task_id: String },
    #[error(
        "this node does not run the file role; send file calls to a node that runs the api and link roles"
    )]
    FilesUnavailable,

    #[error(
        "this node does not run the proc role; send process calls to a node that runs the api and link roles"
    )]
    ProcsUnavailable,
    #[error(
        "proc task {task_id:?} not found: it was never started, or it is older than proc.retention and was dropped"
    )]
    ProcTaskNotFound { task_id: String },
    /// Not a failure: the task is still in the dispatch queue (bk-nodeman
    /// polls again on 1000115); `data` holds every entry at 115.
    #[error("proc task {task_id:?} is still queued; poll again")]
    ProcTaskQueued {
        task_id: String,
        data: serde_json::Value,
    },

    #[error(
        "this node does not run the message role; send plugin messages to a node that runs the api and link roles"
    )]
    MessagesUnavailable,
    /// A plugin-message dispatch refused as a whole (slot, token).
    #[error(transparent)]
    Message(#[from] crate::role::message::MessageError),

    #[error(
        "this node does not run the data role, which keeps the agents' system snapshots; \
         send get_agent_snapshot to a node that runs the api and data roles"
    )]
    SnapshotsUnavailable,

    /// The cluster registry cannot list the nodes now.
    #[error("cannot list the cluster's nodes: {0}; retry, and check the node's log and ZooKeeper")]
    Registry(#[from] gse_core::seams::RegistryError),

    /// A data-route call (route/stream_to APIs) refused or failed.
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(task_id) => ApiError::TaskNotFound {
                task_id: quoted(&task_id),
            },
            TaskError::TooLarge { field, problem, .. } => ApiError::Invalid {
                field: field.into(),
                problem,
            },
            TaskError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<ProcError> for ApiError {
    fn from(e: ProcError) -> Self {
        match e {
            ProcError::NotFound(task_id) => ApiError::ProcTaskNotFound {
                task_id: quoted(&task_id),
            },
            ProcError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        let text = e.to_string();
        match e {
            FileError::NotFound(task_id) => ApiError::TransferNotFound {
                task_id: quoted(&task_id),
            },
            FileError::PassThroughRefused { index, .. } => ApiError::Invalid {
                field: format!("pass_through[{index}]"),
                problem: text,
            },
            FileError::Store(e) => ApiError::Store(e),
        }
    }
}

/// An API connection refused at accept (answered 503 before closing).
impl From<gse_link::limits::Refusal> for ApiError {
    fn from(r: gse_link::limits::Refusal) -> Self {
        use gse_link::limits::Refusal;
        match r {
            Refusal::Total { limit, .. } => ApiError::TooManyConnections { limit },
            Refusal::PerIp { ip, limit, .. } => ApiError::TooManyConnectionsFrom {
                addr: ip.to_string(),
                limit,
            },
        }
    }
}

// === impl ApiError ===

impl ApiError {
    /// The envelope `code`.
    pub fn code(&self) -> i64 {
        use ApiError::*;
        match self {
            InvalidJson { .. }
            | BodyUnreadable { .. }
            | BodyNotObject { .. }
            | MissingField { .. }
            | WrongType { .. } => 1000400,
            BadIp { .. } | BadCloudId { .. } | BadAgentId { .. } | Invalid { .. } => 1000400,
            BadHttp => 1000400,
            NoCredentials | BadAuthorizationHeader { .. } | PreAuthBodyTooLarge { .. } => 1000401,
            Timeout { .. } => 1000408,
            UriTooLong { .. } => 1000414,
            HeadersTooLarge { .. } => 1000431,
            AnswerTooLarge { .. } => 1000413,
            TooManyConnections { .. } | TooManyConnectionsFrom { .. } => 1000503,
            UnknownApp { .. } => 1000402,
            WrongSecret { .. } => 1000403,
            AuthBusy => 1000503,
            UnknownPath { .. } | MetricsDisabled => 1000404,
            MethodNotAllowed { .. } => 1000405,
            BodyTooLarge { .. } | TooManyEntries { .. } | OverLimit { .. } => 1000413,
            // Unavailable (Redis down, SQLite busy): the same call may work
            // soon, so 503 as for any overloaded dependency.
            Store(e) if e.is_retryable() => 1000503,
            Store(_) => 1000500,
            TasksUnavailable | FilesUnavailable => 1000503,
            NoAgentFound { .. } => 1011003,
            ProcsUnavailable | MessagesUnavailable => 1000503,
            Message(e) => {
                use crate::role::message::MessageError as M;
                match e {
                    M::UnknownSlot(_) => 1000400,
                    M::WrongToken(_) => 1000403,
                    M::Busy => 1000503,
                    M::Store(e) if e.is_retryable() => 1000503,
                    M::Store(_) => 1000500,
                }
            }
            SnapshotsUnavailable | Registry(_) => 1000503,
            ProcTaskNotFound { .. } => TASK_NOT_FOUND,
            ProcTaskQueued { .. } => crate::role::proc::codes::ENVELOPE_QUEUED,
            TaskNotFound { .. } | TransferNotFound { .. } => TASK_NOT_FOUND,
            Route(e) => e.code(),
        }
    }

    /// The HTTP status the envelope travels with.
    pub fn status(&self) -> StatusCode {
        match self.code() {
            1000400 => StatusCode::BAD_REQUEST,
            1000401..=1000403 => StatusCode::UNAUTHORIZED,
            1000404 => StatusCode::NOT_FOUND,
            1000405 => StatusCode::METHOD_NOT_ALLOWED,
            1000408 => StatusCode::REQUEST_TIMEOUT,
            1000413 => StatusCode::PAYLOAD_TOO_LARGE,
            1000414 => StatusCode::URI_TOO_LONG,
            1000431 => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            1000500 => StatusCode::INTERNAL_SERVER_ERROR,
            1000503 => StatusCode::SERVICE_UNAVAILABLE,
            // 1011003 and 1011101 are answers, not failures of the call:
            // bk-nodeman reads the envelope only when the HTTP status is 2xx.
            _ => StatusCode::OK,
        }
    }

    /// The envelope `data`: an empty list where clients iterate it even on
    /// failure, else null.
    pub fn data(&self) -> serde_json::Value {
        match self {
            ApiError::NoAgentFound { .. } => serde_json::Value::Array(Vec::new()),
            ApiError::ProcTaskQueued { data, .. } => data.clone(),
            _ => serde_json::Value::Null,
        }
    }

    /// Whether this is an authentication failure (logged at WARN).
    pub fn is_auth_failure(&self) -> bool {
        (1000401..=1000403).contains(&self.code())
    }
}

/// Caller input shortened for quoting in a message, so a huge field cannot
/// blow up the answer or the log.
pub fn quoted(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_QUOTED_CHARS).collect();
    out.push_str("...");
    out
}

/// The JSON type name of a value, for "expected X, got Y" messages.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

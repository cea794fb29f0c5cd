//! How a data-route call fails, with its envelope code.
//!
//! 1014505 is what GSE answers for a channel or stream_to that does not
//! exist (bk-cmdb's client recognises it); the other 10145xx codes are ours
//! in the same range. docs/API.md lists them.

use gse_core::seams::StoreError;

/// Envelope code: no such channel or stream_to (GSE's own code).
pub const NOT_FOUND: i64 = 1014505;
/// Envelope code: `add_route` with a channel id that is already registered.
pub const CHANNEL_EXISTS: i64 = 1014506;
/// Envelope code: a stream_to that routes still use cannot be deleted.
pub const STREAM_TO_IN_USE: i64 = 1014507;
/// Envelope code: a route names a stream_to that does not exist.
pub const UNKNOWN_STREAM_TO: i64 = 1014508;
/// Envelope code: no id left in the allocation range.
pub const IDS_EXHAUSTED: i64 = 1014509;

/// Why a data-route call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{field} has {count} entries, over the limit of {limit}; split the request")]
    OverLimit {
        field: String,
        count: usize,
        limit: usize,
    },
    #[error(
        "channel {channel_id} of plat_name {plat_name:?} does not exist; add it with add_route first"
    )]
    ChannelNotFound { channel_id: u32, plat_name: String },
    #[error(
        "stream_to {stream_to_id} of plat_name {plat_name:?} does not exist; query_streamto lists the existing ones"
    )]
    StreamToNotFound {
        stream_to_id: u32,
        plat_name: String,
    },
    #[error(
        "channel {channel_id} already exists; change it with update_route, or omit metadata.channel_id to get a new one"
    )]
    ChannelExists { channel_id: u32 },
    #[error(
        "stream_to {stream_to_id} is used by the routes of channels {channels:?}; update or delete those routes first"
    )]
    StreamToInUse {
        stream_to_id: u32,
        channels: Vec<u32>,
    },
    #[error(
        "{field}: stream_to {stream_to_id} does not exist; create it with add_streamto, or use an id that query_streamto lists"
    )]
    UnknownStreamTo { field: String, stream_to_id: u32 },
    #[error("no {what} id is left between {first} and {last}; delete unused ones")]
    IdsExhausted {
        what: &'static str,
        first: u32,
        last: u32,
    },
    #[error("{limit} {what} exist already, the most this server keeps; delete unused ones")]
    TooManyStored { what: &'static str, limit: usize },
    #[error(
        "this node does not keep data routes; send route and stream_to calls to a node that runs the api role"
    )]
    Unavailable,
    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),
}

impl RouteError {
    /// The envelope `code`.
    pub fn code(&self) -> i64 {
        match self {
            RouteError::Invalid { .. } => 1000400,
            RouteError::OverLimit { .. } => 1000413,
            RouteError::ChannelNotFound { .. } | RouteError::StreamToNotFound { .. } => NOT_FOUND,
            RouteError::ChannelExists { .. } => CHANNEL_EXISTS,
            RouteError::StreamToInUse { .. } => STREAM_TO_IN_USE,
            RouteError::UnknownStreamTo { .. } => UNKNOWN_STREAM_TO,
            RouteError::IdsExhausted { .. } | RouteError::TooManyStored { .. } => IDS_EXHAUSTED,
            RouteError::Store(_) => 1000500,
            RouteError::Unavailable => 1000503,
        }
    }

    /// An `Invalid` error for `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        RouteError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

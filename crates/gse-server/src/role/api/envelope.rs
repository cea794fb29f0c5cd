//! The BlueKing envelope every API answer travels in, and the request id.
//!
//! `{"result": bool, "code": int, "message": str, "data": ...}`: bk-job counts
//! a call as successful when `result` is true or `code` is 0, bk-nodeman
//! checks `result` first (COMPAT.md §2.0), so both always agree here.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;

/// Header carrying the caller's request id; echoed, or generated when absent.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-bkapi-request-id");

/// Longest request id echoed back; a longer one is replaced by our own.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The answer to one API call, before it becomes an HTTP response.
#[derive(Debug, Serialize)]
pub struct Envelope {
    pub result: bool,
    pub code: i64,
    pub message: String,
    pub data: Value,
    #[serde(skip)]
    pub status: StatusCode,
}

// === impl Envelope ===

impl Envelope {
    pub fn success(data: Value) -> Self {
        Envelope {
            result: true,
            code: 0,
            message: "success".to_string(),
            data,
            status: StatusCode::OK,
        }
    }

    pub fn failure(err: &ApiError) -> Self {
        Envelope {
            result: false,
            code: err.code(),
            message: err.to_string(),
            data: err.data(),
            status: err.status(),
        }
    }

    /// Turns the envelope into an HTTP response carrying `request_id`.
    pub fn into_response_with_id(self, request_id: HeaderValue) -> Response {
        let mut response = (self.status, axum::Json(&self)).into_response();
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        response
    }
}

/// The caller's request id if it sent a usable one, else a fresh random one
/// (32 hex digits, like the gateway's).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let given = headers
        .get(REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.to_str().is_ok());
    match given {
        Some(v) => v.clone(),
        None => {
            let id = format!("{:032x}", rand::random::<u128>());
            HeaderValue::from_str(&id).expect("hex digits are a valid header value")
        }
    }
}

/// A plain-text answer for the non-API endpoints (/metrics).
pub fn text_response(body: String, request_id: HeaderValue) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response();
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    response
}

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

    /// Like [`Envelope::into_response_with_id`], but refused with
    /// [`ApiError::AnswerTooLarge`] as soon as its JSON grows past `limit`
    /// bytes (serialisation stops there: the over-large text is never
    /// held whole).
    pub fn into_bounded_response(
        self,
        request_id: HeaderValue,
        limit: usize,
    ) -> Result<Response, ApiError> {
        let mut out = Bounded {
            buf: Vec::new(),
            limit,
        };
        serde_json::to_writer(&mut out, &self).map_err(|_| ApiError::AnswerTooLarge { limit })?;
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            out.buf,
        )
            .into_response();
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        Ok(response)
    }

    /// A whole HTTP/1.1 answer carrying this envelope, for the places that
    /// answer outside the HTTP server (connections refused at accept,
    /// requests the HTTP parser itself refused). It asks the client to
    /// close the connection.
    pub fn to_http_bytes(&self, request_id: &HeaderValue) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("an envelope always serialises");
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{}: ",
            self.status.as_u16(),
            body.len(),
            REQUEST_ID_HEADER,
        )
        .into_bytes();
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// A writer that refuses to grow past `limit` bytes.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other("answer over the limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

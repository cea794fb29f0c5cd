//! The HTTP side of one request: one catch-all handler that resolves the
//! [`Route`], reads and authenticates the body, runs the endpoint and wraps
//! the answer; connections themselves are [`listener`](super::listener)'s.
//!
//! A catch-all rather than axum routes, so that prefix and slash handling,
//! 404, 405, 408 and 414 all answer in the envelope from one place.
//! Credentials in headers are checked before any body byte is read; with
//! credentials in the body only `api.preauth_body_limit` bytes are read
//! before the app is checked. Answers are bounded by
//! `api.max_response_bytes`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiContext;
use super::auth::Credentials;
use super::body::{Fields, parse_object, read_limited};
use super::conn_io::{MAX_HEAD_BYTES, MAX_HEADERS, MAX_URI_BYTES};
use super::endpoint::{Endpoint, Route};
use super::envelope::{Envelope, REQUEST_ID_HEADER, request_id, text_response};
use super::error::ApiError;
use super::metrics;

/// The complete API app: every endpoint, /healthz and /metrics.
pub fn router(ctx: ApiContext) -> Router {
    Router::new().fallback(dispatch).with_state(Arc::new(ctx))
}

async fn dispatch(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let route = check_head(&req).and_then(|()| Route::parse(req.method(), req.uri().path()));
    let label = route.as_ref().map_or(metrics::UNKNOWN_PATH, Route::label);
    let (code, response) = match route {
        Ok(Route::Health) => health(id),
        Ok(Route::Metrics) => prometheus(&ctx, id),
        Ok(Route::OpenApi) => (0, openapi_response(id)),
        Ok(Route::Api(endpoint)) => api_call(&ctx, endpoint, req, id).await,
        Err(err) => {
            let envelope = failure(&id, label, &err);
            (envelope.code, envelope.into_response_with_id(id))
        }
    };
    let elapsed = started.elapsed();
    metrics::record(label, code, elapsed);
    tracing::debug!(
        path = label,
        code,
        request_id = response_request_id(&response),
        elapsed_ms = elapsed.as_millis() as u64,
        "API request answered"
    );
    response
}

/// Refuses a request line or headers over the limits. hyper refuses
/// most such requests itself (see [`conn_io`](super::conn_io)), but a head
/// that arrives whole in one read gets through its buffer check.
fn check_head(req: &Request) -> Result<(), ApiError> {
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return Err(ApiError::UriTooLong {
            limit: MAX_URI_BYTES,
        });
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEAD_BYTES || headers.len() > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge {
            bytes: MAX_HEAD_BYTES,
            count: MAX_HEADERS,
        });
    }
    Ok(())
}

fn response_request_id(response: &Response) -> &str {
    response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// One API call within `api.request_timeout`, its answer within
/// `api.max_response_bytes`; every failure in the envelope.
async fn api_call(
    ctx: &ApiContext,
    endpoint: Endpoint,
    req: Request,
    id: HeaderValue,
) -> (i64, Response) {
    let after = ctx.config.request_timeout;
    let body_read = AtomicBool::new(req.body().is_end_stream());
    let answered = tokio::time::timeout(after, call(ctx, endpoint, req, &body_read))
        .await
        .unwrap_or(Err(ApiError::Timeout { after }))
        .and_then(|data| {
            Envelope::success(data).into_bounded_response(id.clone(), ctx.config.max_response_bytes)
        });
    match answered {
        Ok(response) => (0, response),
        Err(err) => {
            if err.is_auth_failure() || matches!(err, ApiError::AuthBusy) {
                let request_id = id.to_str().unwrap_or_default().to_string();
                let path = endpoint.path();
                let reason = auth_reason(&err);
                ctx.auth_refusals.refused(reason, None, || {
                    format!("API call to {path} refused (request {request_id}): {err}")
                });
            }
            let envelope = failure(&id, endpoint.path(), &err);
            let code = envelope.code;
            let mut response = envelope.into_response_with_id(id);
            if !body_read.load(Ordering::Relaxed) {
                // Refused before its body was read (credentials, size): the
                // rest of the body is still on the connection, so it cannot
                // carry another request. Say so, or a client's pool would
                // send its next request on a connection we are closing.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            (code, response)
        }
    }
}

/// Reads, authenticates and runs one API call.
async fn call(
    ctx: &ApiContext,
    endpoint: Endpoint,
    req: Request,
    body_read: &AtomicBool,
) -> Result<serde_json::Value, ApiError> {
    let (parts, body) = req.into_parts();
    let store = ctx.store.as_ref();
    let (creds, fields) = match Credentials::from_headers(&parts.headers)? {
        // Header credentials are checked before any body byte is read: a
        // caller with wrong ones is turned away without its body.
        Some(creds) => {
            creds.verify(store, &ctx.secrets).await?;
            let bytes = read_limited(&parts.headers, body, ctx.config.max_body_bytes).await?;
            body_read.store(true, Ordering::Relaxed);
            (creds, parse_object(&bytes)?)
        }
        // Credentials in the body: only a small body is read before the
        // app is known, so unauthenticated callers cannot make the server
        // hold big bodies.
        None => {
            let limit = ctx.config.preauth_body_limit;
            let bytes = read_limited(&parts.headers, body, limit)
                .await
                .map_err(|e| match e {
                    ApiError::BodyTooLarge { .. } => ApiError::PreAuthBodyTooLarge { limit },
                    other => other,
                })?;
            body_read.store(true, Ordering::Relaxed);
            let fields: Fields = parse_object(&bytes)?;
            let creds = Credentials::from_body(&fields)?.ok_or(ApiError::NoCredentials)?;
            creds.verify(store, &ctx.secrets).await?;
            (creds, fields)
        }
    };
    endpoint.handle(ctx, &creds.app_code, &fields).await
}

/// The failure envelope, logged: auth failures at WARN (they may be an
/// attack or a misconfigured client), the rest at DEBUG.
fn failure(id: &HeaderValue, path: &str, err: &ApiError) -> Envelope {
    let request_id = id.to_str().unwrap_or_default();
    if err.is_auth_failure() || matches!(err, ApiError::AuthBusy) {
        // Logged by the caller through the burst log (a flood of guesses
        // must not bury the log); here only at DEBUG.
        tracing::debug!(path, request_id, error = %err, "API call refused");
    } else if matches!(err, ApiError::Store(_)) {
        tracing::warn!(path, request_id, error = %err, "API call failed");
    } else {
        tracing::debug!(path, request_id, error = %err, "API call refused");
    }
    Envelope::failure(err)
}

/// The burst log's reason for a refused credential.
fn auth_reason(err: &ApiError) -> &'static str {
    match err {
        ApiError::UnknownApp { .. } => "unknown app",
        ApiError::WrongSecret { .. } => "wrong secret",
        ApiError::AuthBusy => "too many secret checks waiting",
        _ => "no or malformed credentials",
    }
}

fn health(id: HeaderValue) -> (i64, Response) {
    let data = serde_json::json!({ "version": gse_core::VERSION });
    let mut envelope = Envelope::success(data);
    envelope.message = "ok".to_string();
    (0, envelope.into_response_with_id(id))
}

/// The OpenAPI document, built once per process.
fn openapi_response(id: HeaderValue) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_json(),
    )
        .into_response();
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

fn prometheus(ctx: &ApiContext, id: HeaderValue) -> (i64, Response) {
    match &ctx.metrics {
        Some(handle) => (0, text_response(handle.render(), id)),
        None => {
            let envelope = Envelope::failure(&ApiError::MetricsDisabled);
            (envelope.code, envelope.into_response_with_id(id))
        }
    }
}

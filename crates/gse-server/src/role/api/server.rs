//! The HTTP side: one catch-all handler that resolves the [`Route`], reads
//! and authenticates the body, runs the endpoint and wraps the answer.
//!
//! A catch-all rather than axum routes, so that prefix and slash handling,
//! 404 and 405 all answer in the envelope from one place.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use super::ApiContext;
use super::auth::Credentials;
use super::body::{Fields, parse_object, read_limited};
use super::endpoint::{Endpoint, Route};
use super::envelope::{Envelope, REQUEST_ID_HEADER, request_id, text_response};
use super::error::ApiError;
use super::metrics;

/// The complete API app: every endpoint, /healthz and /metrics, with the
/// request timeout applied.
pub fn router(ctx: ApiContext) -> Router {
    let timeout = ctx.config.request_timeout;
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(ctx))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    ctx: ApiContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "API listening");
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!(%addr, "API stopped");
    Ok(())
}

async fn dispatch(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let route = Route::parse(req.method(), req.uri().path());
    let label = route.as_ref().map_or(metrics::UNKNOWN_PATH, Route::label);
    let (code, response) = match route {
        Ok(Route::Health) => health(id),
        Ok(Route::Metrics) => prometheus(&ctx, id),
        Ok(Route::Api(endpoint)) => {
            let envelope = match call(&ctx, endpoint, req).await {
                Ok(data) => Envelope::success(data),
                Err(err) => failure(&id, endpoint.path(), &err),
            };
            (envelope.code, envelope.into_response_with_id(id))
        }
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

fn response_request_id(response: &Response) -> &str {
    response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Reads, authenticates and runs one API call.
async fn call(
    ctx: &ApiContext,
    endpoint: Endpoint,
    req: Request,
) -> Result<serde_json::Value, ApiError> {
    let (parts, body) = req.into_parts();
    // Header credentials are checked before the body is read: a caller with
    // wrong ones is turned away without its body being read or parsed.
    let from_headers = Credentials::from_headers(&parts.headers)?;
    if let Some(creds) = &from_headers {
        creds.verify(ctx.store.as_ref(), &ctx.secrets).await?;
    }
    let bytes = read_limited(&parts.headers, body, ctx.config.max_body_bytes).await?;
    let fields: Fields = parse_object(&bytes)?;
    let creds = match from_headers {
        Some(creds) => creds,
        None => {
            let creds = Credentials::from_body(&fields)?.ok_or(ApiError::NoCredentials)?;
            creds.verify(ctx.store.as_ref(), &ctx.secrets).await?;
            creds
        }
    };
    endpoint.handle(ctx, &creds.app_code, &fields).await
}

/// The failure envelope, logged: auth failures at WARN (they may be an
/// attack or a misconfigured client), the rest at DEBUG.
fn failure(id: &HeaderValue, path: &str, err: &ApiError) -> Envelope {
    let request_id = id.to_str().unwrap_or_default();
    if err.is_auth_failure() {
        tracing::warn!(path, request_id, error = %err, "API call refused");
    } else if matches!(err, ApiError::Store(_)) {
        tracing::warn!(path, request_id, error = %err, "API call failed");
    } else {
        tracing::debug!(path, request_id, error = %err, "API call refused");
    }
    Envelope::failure(err)
}

fn health(id: HeaderValue) -> (i64, Response) {
    let data = serde_json::json!({ "version": gse_core::VERSION });
    let mut envelope = Envelope::success(data);
    envelope.message = "ok".to_string();
    (0, envelope.into_response_with_id(id))
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

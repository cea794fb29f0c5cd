//! The API's accept loop and its connections, bounded against hostile
//! clients.
//!
//! Start at [`serve`]. Each accepted connection is admitted by
//! [`ConnLimits`] (global cap within the open-files limit, cap per address:
//! `crate::fd_budget`) or refused: answered 503 in the envelope and closed, by one of a few
//! refusal slots, or closed at once when those are busy too, so refusing
//! never costs more than a handful of descriptors. Refusals are logged once
//! per burst ([`RefusalLog`]). An admitted connection is served by hyper's
//! HTTP/1 server with a header-read timeout; [`conn_io`] closes it when it
//! is idle and puts hyper's own refusals in the envelope. The request
//! itself (routing, auth, bodies) is [`router`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use gse_core::refusals::RefusalLog;

use super::ApiContext;
use super::config::ApiConfig;
use super::conn_io::{self, Activity, ApiStream, MAX_HEAD_BYTES, MAX_HEADERS};
use super::envelope::{Envelope, request_id};
use super::error::ApiError;
use super::metrics;
use super::server::router;
use gse_link::limits::{ConnLimits, ConnPermit, Refusal};

/// Refused connections are summed up in one log line this often.
pub(super) const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);
/// Longest a refused connection is kept to read what the client still
/// sends after our answer (closing with unread data would reset the
/// connection and could lose the answer).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes read from a refused client before closing anyway.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// Refused connections answered at once (a sixteenth of the cap, within
/// these bounds); more are closed without an answer. The open-files
/// reserve covers them.
const MIN_REFUSAL_SLOTS: usize = 16;
const MAX_REFUSAL_SLOTS: usize = 64;
/// After an accept error (e.g. EMFILE), the loop waits this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the accept loop and its connections share.
struct Server {
    app: Router,
    config: ApiConfig,
    limits: Arc<ConnLimits>,
    refusals: Arc<RefusalLog>,
    /// Descriptors allowed for answering refused connections.
    refusal_slots: Arc<Semaphore>,
    connections: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish (at most `api.request_timeout`). `limits`
/// caps its connections (`FdBudget::api_limits`).
pub async fn serve(
    listener: TcpListener,
    ctx: ApiContext,
    limits: Arc<ConnLimits>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let refusals = Arc::new(RefusalLog::new("API connections", REFUSAL_LOG_WINDOW));
    tokio::spawn(refusals.clone().run(shutdown.clone()));
    tokio::spawn(ctx.auth_refusals.clone().run(shutdown.clone()));
    let slots = (limits.max_total() / 16).clamp(MIN_REFUSAL_SLOTS, MAX_REFUSAL_SLOTS);
    let server = Arc::new(Server {
        app: router(ctx.clone()),
        config: ctx.config,
        limits,
        refusals,
        refusal_slots: Arc::new(Semaphore::new(slots)),
        connections: TaskTracker::new(),
        shutdown,
    });
    tracing::info!(
        %addr,
        max_connections = server.limits.max_total(),
        max_connections_per_ip = server.limits.max_per_ip(),
        "API listening"
    );
    accept_loop(&server, &listener).await;
    drop(listener);
    server.connections.close();
    server.connections.wait().await;
    tracing::info!(%addr, "API stopped");
    Ok(())
}

async fn accept_loop(server: &Arc<Server>, listener: &TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => match server.limits.admit(peer.ip()) {
                Ok(permit) => {
                    server
                        .connections
                        .spawn(serve_conn(server.clone(), tcp, permit));
                }
                Err(refusal) => refuse(server, tcp, peer, refusal),
            },
            Err(e) => {
                // Out of descriptors (or memory): the API's cap keeps it
                // below the limit, so something else used them. Back off
                // instead of spinning; one line per burst.
                server.refusals.refused("accept failed", None, || {
                    format!("cannot accept API connections: {e}")
                });
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Answers a refused connection 503 (when a refusal slot is free) and
/// closes it.
fn refuse(server: &Arc<Server>, tcp: TcpStream, peer: SocketAddr, refusal: Refusal) {
    metrics::connection_refused(refusal.reason());
    let err = ApiError::from(refusal);
    server
        .refusals
        .refused(refusal.reason(), Some(peer.ip()), || {
            format!("API connection from {peer} refused: {err}")
        });
    match server.refusal_slots.clone().try_acquire_owned() {
        Ok(slot) => {
            server.connections.spawn(answer_refusal(tcp, err, slot));
        }
        // Every slot busy: close at once, without an answer.
        Err(_) => drop(tcp),
    }
}

async fn answer_refusal(mut tcp: TcpStream, err: ApiError, _slot: OwnedSemaphorePermit) {
    let answer = Envelope::failure(&err).to_http_bytes(&request_id(&HeaderMap::new()));
    let linger = async {
        tcp.write_all(&answer).await?;
        tcp.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// Serves one admitted connection until the client closes it, it is idle
/// for `api.idle_timeout`, hyper closes it (header timeout, bad request),
/// or the node shuts down.
async fn serve_conn(server: Arc<Server>, tcp: TcpStream, permit: ConnPermit) {
    let _ = tcp.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(ApiStream::new(tcp, activity.clone()));
    let app = server.app.clone();
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = requests.busy();
        let app = app.clone();
        async move {
            let answer = app.oneshot(req).await;
            drop(busy);
            answer
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(server.config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "API connection closed");
            }
        }
        _ = conn_io::idle(&activity, server.config.idle_timeout) => {
            tracing::debug!(timeout = ?server.config.idle_timeout, "idle API connection closed");
        }
        _ = server.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(server.config.request_timeout, conn).await;
        }
    }
    drop(permit);
}

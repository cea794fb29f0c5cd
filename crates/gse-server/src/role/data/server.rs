//! One DataServer (C5): a mutual-TLS listener for agents' data links.
//!
//! Per connection ([`serve_link`]), once admitted by `gse_link`'s
//! accept loop within the node's pending-handshake caps (`[data]
//! max_pending_handshakes`, in all and per address, shared by every
//! DataServer of the node: `crate::fd_budget`; over them a connection is
//! closed at once): TLS handshake and `DataHello` each within
//! `handshake_timeout` (the agent id, cloud id and identity IP are checked,
//! and the claim admitted like a registration's: the certificate's identity
//! and the identity pin, `gse_link::claim`; the source of every record
//! is `cloud:ip`), `DataHelloAck` with the batch size limit, then
//! `DataBatch` frames. Up to `batches_in_progress`
//! batches of a link are stored at once ([`BatchHandler`]); each is
//! answered by one `DataAck` (code 0 only after every sink stored it, else
//! [`ACK_SINK_FAILED`] and the agent retries). Frames over the limit, bodies
//! that do not decode and unexpected types close that link only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use gse_core::AgentKey;
use gse_core::seams::StateStore;
use gse_link::claim::{self, Claim, claimed_key};
use gse_link::proxy::mux::{self, ChannelServer, MuxLimits, ProxiedChannel};
use gse_link::session::{AgentChannel, FirstFrameError, ServerSession as Link, first_frame};
use gse_link::{AcceptNames, Accepted, Acceptor, ConnPermit};
use gse_proto::link::{DataAck, DataHello, DataHelloAck, ProxyHelloAck};
use gse_proto::{Frame, FrameCodec, MsgType};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::balance::ServerLoad;
use super::batch::BatchHandler;
use super::config::DataConfig;
use super::metrics;
use gse_proto::link::DataBatch;

/// Ack code: a sink could not store the batch (retry later).
pub const ACK_SINK_FAILED: u32 = 1;
/// How long a write to an agent may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Room for the frame's own framing around the largest batch body.
const FRAME_SLACK: usize = 4096;

/// How a DataServer's accept loop names its connections (log lines, metrics).
pub(super) const ACCEPT_NAMES: AcceptNames = AcceptNames {
    one: "data link",
    many: "data connections",
    over_caps: "too many data links without DataHello yet",
    tls_prefix: "data link: ",
    refused_metric: metrics::CONNECTIONS_REFUSED_TOTAL,
    tls_failures_metric: None,
};

/// One listening DataServer.
pub struct DataServer {
    pub load: Arc<ServerLoad>,
    /// Accepts data links up to their TLS handshake, within the pending
    /// caps shared by the node's DataServers.
    pub(super) acceptor: Arc<Acceptor>,
    pub(super) handler: BatchHandler,
    pub(super) config: DataConfig,
    /// Where identity pins are checked.
    pub(super) store: Arc<dyn StateStore>,
    pub(super) shutdown: CancellationToken,
}

// === impl DataServer ===

impl DataServer {
    /// Accepts data links until shutdown.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        tracing::info!(server = %self.load.id, endpoint = %self.load.endpoint, "DataServer listening");
        let svc = self.clone();
        let acceptor = self.acceptor.clone();
        acceptor
            .run(listener, self.shutdown.clone(), move |accepted| {
                serve_link(svc.clone(), accepted)
            })
            .await;
    }
}

async fn serve_link(svc: Arc<DataServer>, accepted: Accepted) {
    let cert_area = gse_link::proxy::proxy_mark(accepted.peer_certificates());
    let Accepted {
        tls,
        peer,
        pending,
        deadline,
        ..
    } = accepted;
    // A proxy's channels carry whole batches as its agents send them.
    let codec = FrameCodec::new(svc.config.max_batch_bytes + 2 * FRAME_SLACK);
    let mut link = Framed::new(tls, codec);
    if let Some(cert_area) = cert_area {
        return serve_proxy(svc, link, cert_area, (peer, deadline, pending)).await;
    }
    serve_agent(&svc, &mut link, peer, Some(pending)).await;
}

/// Serves one agent's data link (a direct one, or a channel of its
/// proxy's) until it ends.
async fn serve_agent<L: AgentChannel>(
    svc: &DataServer,
    link: &mut L,
    peer: SocketAddr,
    pending: Option<ConnPermit>,
) {
    let Some(key) = hello(svc, link, peer).await else {
        return;
    };
    // Admitted: no longer counted among the pending handshakes.
    drop(pending);
    let counters = svc.load.attach(key);
    let source: Arc<str> = key.to_string().into();
    tracing::info!(agent = %key, server = %svc.load.id, "data link up");
    let reason = pump(svc, link, &source, &counters).await;
    svc.load.detach();
    tracing::info!(agent = %key, server = %svc.load.id, reason = %reason, "data link closed");
}

/// Agents one proxy's data link may carry at once.
const PROXY_CHANNELS: usize = 50_000;
/// Batches queued into one channel's session before it is closed (its
/// agent sends them again): the agent itself has at most a few in flight.
const PROXY_CHANNEL_QUEUE: usize = 64;
const PROXY_OUT_QUEUE: usize = 4096;

/// Serves a gse-proxy's data link (C10): its channels are its area's
/// agents' data links, each served as a direct one (identity checked
/// against what its certificate names, of the proxy's area only).
async fn serve_proxy(
    svc: Arc<DataServer>,
    mut link: Link,
    cert_area: Option<i64>,
    (peer, deadline, pending): (SocketAddr, Instant, ConnPermit),
) {
    let server_id = svc.load.id.clone();
    let accept = |_: &gse_link::proxy::Hello| {
        Ok(ProxyHelloAck {
            accepted: true,
            node_id: server_id.clone(),
            ..ProxyHelloAck::default()
        })
    };
    let Some(hello) = mux::accept_hello(
        &mut link,
        (cert_area, peer, deadline),
        WRITE_TIMEOUT,
        accept,
    )
    .await
    else {
        return;
    };
    drop(pending);
    tracing::info!(proxy = %hello.proxy_id, bk_cloud_id = hello.area, server = %svc.load.id, "a proxy's data link up");
    let limits = MuxLimits {
        max_channels: PROXY_CHANNELS,
        channel_queue: PROXY_CHANNEL_QUEUE,
        out_queue: PROXY_OUT_QUEUE,
        write_timeout: WRITE_TIMEOUT,
        who: format!("DataServer {}", svc.load.id),
    };
    let (up_tx, mut up_rx) = mpsc::channel(PROXY_OUT_QUEUE);
    let shutdown = svc.shutdown.clone();
    let server = ProxiedData { svc: svc.clone() };
    let reason = mux::relay(
        &mut link,
        (&hello, peer),
        &server,
        &limits,
        (&up_tx, &mut up_rx),
        &shutdown,
    )
    .await;
    tracing::info!(proxy = %hello.proxy_id, server = %svc.load.id, reason = %reason, "a proxy's data link closed");
}

/// Serves a proxy's channels as data links.
struct ProxiedData {
    svc: Arc<DataServer>,
}

impl ChannelServer for ProxiedData {
    fn serve(&self, mut channel: ProxiedChannel) -> BoxFuture<'static, ()> {
        let svc = self.svc.clone();
        async move {
            let peer = channel.peer;
            serve_agent(&svc, &mut channel, peer, None).await;
        }
        .boxed()
    }
}

/// Reads and checks `DataHello`, answers it; the agent's key if accepted.
async fn hello<L: AgentChannel>(
    svc: &DataServer,
    link: &mut L,
    peer: SocketAddr,
) -> Option<AgentKey> {
    let limit = svc.config.handshake_timeout;
    let first = match first_frame(link, Instant::now() + limit).await {
        Ok(f) => f,
        Err(FirstFrameError::Frame(e)) => {
            tracing::warn!(peer = %peer, error = %e, "bad first frame on a data link; closing");
            return None;
        }
        Err(FirstFrameError::Closed) => return None,
        Err(FirstFrameError::Timeout) => {
            tracing::warn!(peer = %peer, "no DataHello within {limit:?}; closing");
            return None;
        }
    };
    let checked = match first.msg_type {
        MsgType::DataHello => first
            .decode::<DataHello>()
            .map_err(|e| e.to_string())
            .and_then(check_hello),
        other => Err(format!(
            "the first frame of a data link must be DataHello, got type {}",
            other.to_u16()
        )),
    };
    let checked = match checked {
        // Through a proxy, only agents of its area.
        Ok((key, _)) if link.cloud_area().is_some_and(|area| area != key.cloud_id) => Err(format!(
            "agent {key} is of cloud area {}, but sends data through the proxy of cloud area {}",
            key.cloud_id,
            link.cloud_area().unwrap_or_default()
        )),
        Ok((key, agent_id)) => {
            let claim = Claim {
                key,
                agent_id: &agent_id,
                certificate: link.certificate_identity(),
            };
            claim::admit(svc.store.as_ref(), claim, peer)
                .await
                .map(|_| key)
                .map_err(|refusal| refusal.message().to_string())
        }
        Err(message) => Err(message),
    };
    let answer = |accepted: bool, message: String| DataHelloAck {
        accepted,
        message,
        server_id: svc.load.id.clone(),
        max_batch_bytes: svc.config.max_batch_bytes as u32,
    };
    let (ack, key) = match checked {
        Ok(key) => (answer(true, String::new()), Some(key)),
        Err(message) => {
            tracing::warn!(peer = %peer, "refusing a data link: {message}");
            (answer(false, message), None)
        }
    };
    let frame = Frame::new(MsgType::DataHelloAck, first.stream_id, &ack);
    match timeout(WRITE_TIMEOUT, link.send(frame)).await {
        Ok(Ok(())) => key,
        _ => None,
    }
}

/// Validates what the agent says about itself: its key and agent id (a
/// data link may send as an identity only what may register as it, so the
/// claim is checked like a registration's: `gse_link::claim`).
fn check_hello(h: DataHello) -> Result<(AgentKey, String), String> {
    if h.protocol_version == 0 {
        return Err("protocol_version 0: upgrade the agent".into());
    }
    let key = claimed_key(&h.agent_id, h.cloud_id, &h.identity_ip).map_err(|e| e.to_string())?;
    Ok((key, h.agent_id))
}

/// Stores batches and acks them until the link ends; returns why it ended.
async fn pump<L: AgentChannel>(
    svc: &DataServer,
    link: &mut L,
    source: &Arc<str>,
    counters: &super::balance::AgentCounters,
) -> String {
    let mut storing = FuturesUnordered::new();
    let max = svc.config.batches_in_progress;
    let reason = loop {
        tokio::select! {
            _ = svc.shutdown.cancelled() => break "server shutting down".to_string(),
            Some((seq, result)) = storing.next(), if !storing.is_empty() => {
                if let Err(e) = ack(svc, link, seq, result).await {
                    return e;
                }
            }
            next = link.next(), if storing.len() < max => {
                let frame = match next {
                    None => break "closed by the agent".to_string(),
                    Some(Err(e)) => break format!("bad frame: {e}"),
                    Some(Ok(f)) => f,
                };
                if frame.msg_type != MsgType::DataBatch {
                    break format!("unexpected frame type {} on a data link", frame.msg_type.to_u16());
                }
                let len = frame.body.len() as u64;
                let batch = match DataBatch::decode(frame.body) {
                    Ok(b) => b,
                    Err(e) => break format!("DataBatch {} does not decode: {e}", frame.stream_id),
                };
                counters.records.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                counters.bytes.fetch_add(len, Ordering::Relaxed);
                let handler = svc.handler.clone();
                let source = source.clone();
                storing.push(async move {
                    let seq = batch.seq;
                    (seq, handler.store(&source, batch).await)
                });
            }
        }
    };
    // Finish what is being stored, so those acks are not lost needlessly.
    let drain = async {
        while let Some((seq, result)) = storing.next().await {
            if ack(svc, link, seq, result).await.is_err() {
                return;
            }
        }
    };
    let _ = timeout(WRITE_TIMEOUT, drain).await;
    reason
}

async fn ack<L: AgentChannel>(
    svc: &DataServer,
    link: &mut L,
    seq: u64,
    result: Result<super::batch::Stored, super::batch::StoreError>,
) -> Result<(), String> {
    let (code, message) = match result {
        Ok(_) => (0, String::new()),
        Err(e) => {
            tracing::warn!(server = %svc.load.id, seq, error = %e, "a data batch was not stored; the agent will send it again");
            (ACK_SINK_FAILED, e.to_string())
        }
    };
    metrics::batch(&svc.load.id, code == 0);
    let frame = Frame::new(MsgType::DataAck, seq, &DataAck { seq, code, message });
    match timeout(WRITE_TIMEOUT, link.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot send an ack: {e}")),
        Err(_) => Err("an ack write did not complete in time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_checked() {
        let good = DataHello {
            agent_id: "agent-1".into(),
            cloud_id: 0,
            identity_ip: "10.0.0.1".into(),
            protocol_version: 1,
        };
        assert_eq!(
            check_hello(good.clone()).unwrap().0.to_string(),
            "0:10.0.0.1"
        );
        for bad in [
            DataHello {
                identity_ip: "x".into(),
                ..good.clone()
            },
            DataHello {
                identity_ip: "0.0.0.0".into(),
                ..good.clone()
            },
            DataHello {
                cloud_id: -1,
                ..good.clone()
            },
            DataHello {
                protocol_version: 0,
                ..good.clone()
            },
        ] {
            assert!(check_hello(bad).is_err());
        }
    }
}

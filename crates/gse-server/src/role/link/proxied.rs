//! Agents behind a gse-proxy (issue 12, C2): a proxy's link to this node.
//!
//! A peer whose certificate is marked as a proxy's says `ProxyHello` (its
//! id, the cloud area it serves, the address its agents reach it at)
//! instead of `Register`, and is told which DataServer to relay its
//! agents' data links to (C10). Then every agent connected to it is a
//! channel (`gse_link::proxy::mux`), served by the same code as a direct
//! agent's link ([`super::connection::run_over`]): Register and its
//! identity checks, the claim (its location's `via` names the proxy), the
//! heartbeats, every role's work. Only agents of the proxy's area register
//! through it. When the proxy's link ends, every channel ends with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use futures::future::BoxFuture;
use gse_link::ConnPermit;
use gse_link::proxy::Hello;
use gse_link::proxy::mux::{self, ChannelServer, MuxLimits, ProxiedChannel, Up};
use gse_link::session::ServerSession;
use gse_proto::link::ProxyHelloAck;
use gse_proto::{Frame, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::{Reached, run_over};
use super::{AgentPath, LinkService};

/// Agents one proxy link may carry at once.
const MAX_CHANNELS: usize = 50_000;
/// Frames queued into one channel's session. The proxy's link never
/// waits for one channel (its other agents' frames, and the writes up
/// that unblock the sessions, would wait behind it): a session that falls
/// this far behind has its channel closed (the agent reconnects).
const CHANNEL_QUEUE: usize = 256;
/// Frames of all channels queued for the proxy's link.
const OUT_QUEUE: usize = 4096;

/// Serves a proxy's link until it ends.
pub(super) async fn serve(
    svc: Arc<LinkService>,
    mut link: ServerSession,
    (cert_area, path): (Option<i64>, AgentPath),
    (peer, deadline, pending): (SocketAddr, Instant, ConnPermit),
) {
    let write_timeout = svc.config.heartbeat_timeout;
    let node_id = svc.node_id.clone();
    let accept = |_: &Hello| {
        Ok(ProxyHelloAck {
            accepted: true,
            message: String::new(),
            node_id: node_id.clone(),
            data_endpoint: svc.proxy_data_endpoint(path),
        })
    };
    let Some(hello) = mux::accept_hello(
        &mut link,
        (cert_area, peer, deadline),
        write_timeout,
        accept,
    )
    .await
    else {
        return;
    };
    drop(pending);
    metrics::counter!("gse_link_proxy_links_total").increment(1);
    tracing::info!(proxy = %hello.proxy_id, bk_cloud_id = hello.area, peer = %peer, agents_reach = %hello.agent_addr, "proxy connected");
    let limits = MuxLimits {
        max_channels: MAX_CHANNELS,
        channel_queue: CHANNEL_QUEUE,
        out_queue: OUT_QUEUE,
        write_timeout,
        who: format!("node {}", svc.node_id),
    };
    let (up_tx, mut up_rx) = mpsc::channel::<Up>(OUT_QUEUE);
    let link_id = svc.next_conn.fetch_add(1, Ordering::Relaxed);
    svc.proxy_links
        .linked(&hello.proxy_id, hello.area, link_id, up_tx.clone());
    let server = Channels {
        svc: svc.clone(),
        link_id,
    };
    let reason = mux::relay(
        &mut link,
        (&hello, peer),
        &server,
        &limits,
        (&up_tx, &mut up_rx),
        &svc.shutdown,
    )
    .await;
    svc.proxy_links.unlinked(&hello.proxy_id, link_id);
    tracing::info!(proxy = %hello.proxy_id, peer = %peer, reason = %reason, "proxy disconnected; its agents' sessions end");
}

/// Serves a proxy's channels as agents' links.
struct Channels {
    svc: Arc<LinkService>,
    /// This proxy link's number among the node's proxy links.
    link_id: u64,
}

impl ChannelServer for Channels {
    fn serve(&self, mut channel: ProxiedChannel) -> BoxFuture<'static, ()> {
        let svc = self.svc.clone();
        let reached = Reached {
            peer: channel.peer,
            port: channel.parent.port(),
            path: AgentPath {
                parent_ip: channel.parent.ip(),
                peer_ip: channel.peer.ip(),
            },
        };
        let conn_id = svc.next_conn.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + svc.config.handshake_timeout;
        async move { run_over(svc, &mut channel, reached, (deadline, None), conn_id).await }.boxed()
    }

    fn link_frame(&self, frame: Frame) -> Result<(), String> {
        match frame.msg_type {
            MsgType::ProxyProbeResult => {
                let result = frame.decode().map_err(|e| format!("protocol error: {e}"))?;
                self.svc.proxy_links.answered(self.link_id, result);
                Ok(())
            }
            other => Err(format!(
                "protocol error: a proxy sent message type {} on its link",
                other.to_u16()
            )),
        }
    }
}

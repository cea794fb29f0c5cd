//! One accepted node link: the hello, then the frames another node sends
//! this one (frames for this node's agents, answers and notices for work
//! this node sent).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gse_link::Accepted;
use gse_link::session::{first_frame, send_within};
use gse_proto::link::{LinkError, NodeHello, NodeHelloAck, NodeRelay, NodeUndelivered};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio_util::codec::Framed;

use super::NodeLinks;

const WRITE_LIMIT: Duration = Duration::from_secs(10);

pub(super) async fn serve_inbound(links: Arc<NodeLinks>, accepted: Accepted) {
    let Accepted {
        tls,
        peer,
        deadline,
        pending,
        ..
    } = accepted;
    let mut link = Framed::new(tls, FrameCodec::new(links.max_frame_bytes));
    let hello = match first_frame(&mut link, deadline).await {
        Ok(f) if f.msg_type == MsgType::NodeHello => match f.decode::<NodeHello>() {
            Ok(h) => h,
            Err(e) => return refuse(&mut link, peer, format!("bad NodeHello: {e}")).await,
        },
        Ok(f) => {
            let why = format!(
                "expected NodeHello, got frame type {:#x}: only gse-server nodes connect to cluster.node_listen",
                f.msg_type.to_u16()
            );
            return refuse(&mut link, peer, why).await;
        }
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "node link closed before its hello");
            return;
        }
    };
    if hello.cluster != links.cluster {
        let why = format!(
            "node {:?} belongs to cluster {:?}, this node ({}) to {:?}: check cluster.zk_root on both",
            hello.node_id, hello.cluster, links.me, links.cluster
        );
        return refuse(&mut link, peer, why).await;
    }
    if hello.node_id == links.me || hello.node_id.is_empty() {
        let why = format!(
            "the dialing node calls itself {:?}, which is this node's id or empty: give every node its own node.id",
            hello.node_id
        );
        return refuse(&mut link, peer, why).await;
    }
    let ack = NodeHelloAck {
        node_id: links.me.clone(),
    };
    if let Err(e) = send_within(
        &mut link,
        Frame::new(MsgType::NodeHelloAck, 0, &ack),
        WRITE_LIMIT,
    )
    .await
    {
        tracing::debug!(peer = %peer, error = %e, "node link closed during its hello");
        return;
    }
    drop(pending);
    let from = hello.node_id;
    tracing::info!(node = %from, peer = %peer, version = %hello.version, "node link accepted");
    loop {
        let frame = tokio::select! {
            _ = links.shutdown.cancelled() => return,
            next = link.next() => match next {
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    tracing::warn!(node = %from, error = %e, "node link failed");
                    return;
                }
                None => {
                    tracing::info!(node = %from, "node link closed by the other node");
                    return;
                }
            },
        };
        metrics::counter!("gse_node_link_frames_received_total").increment(1);
        match frame.msg_type {
            MsgType::NodeToAgent => match frame.decode::<NodeRelay>() {
                Ok(r) => links.on_to_agent(&from, r).await,
                Err(e) => tracing::warn!(node = %from, error = %e, "bad NodeToAgent dropped"),
            },
            MsgType::NodeFromAgent => match frame.decode::<NodeRelay>() {
                Ok(r) => links.on_from_agent(&from, r),
                Err(e) => tracing::warn!(node = %from, error = %e, "bad NodeFromAgent dropped"),
            },
            MsgType::NodeUndelivered => match frame.decode::<NodeUndelivered>() {
                Ok(n) => links.on_undelivered(&from, n),
                Err(e) => tracing::warn!(node = %from, error = %e, "bad NodeUndelivered dropped"),
            },
            other => {
                tracing::debug!(node = %from, msg_type = other.to_u16(), "ignoring a node-link frame type this node does not know");
            }
        }
    }
}

async fn refuse<S>(link: &mut S, peer: std::net::SocketAddr, why: String)
where
    S: futures::Sink<Frame, Error = gse_proto::FrameError> + Unpin,
{
    tracing::warn!(peer = %peer, "node link refused: {why}");
    let err = LinkError {
        code: 403,
        message: why,
    };
    let _ = send_within(link, Frame::new(MsgType::LinkError, 0, &err), WRITE_LIMIT).await;
}

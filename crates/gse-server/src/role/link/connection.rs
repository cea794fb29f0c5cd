//! One agent connection, from its TLS handshake (`gse_link::accept`)
//! to close: register (and claim the agent in the directory) -> serve
//! (heartbeats renewing the claim, outbound frames) -> detach (and release
//! the claim).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gse_core::seams::{AgentRecord, Epoch, HeartbeatUpdate};
use gse_core::{AgentKey, now_ms};
use gse_link::Accepted;
use gse_link::claim::claimed_key;
use gse_link::session::{AgentChannel, FirstFrameError, WriteError, first_frame};
use gse_proto::link::{Goodbye, Heartbeat, HeartbeatAck, LinkError, Register, RegisterAck};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{AgentPath, LinkService, OUTBOUND_QUEUE};
use crate::role::alarm::{Alarm, AlarmKind};

/// Why a link ends whose claim a newer one superseded.
const STALE: &str = "the agent registered again elsewhere; this link is stale";

/// Initial read buffer per connection; grows only for large frames, which
/// keeps tens of thousands of idle links small.
const READ_BUFFER: usize = 512;

pub(super) async fn run(svc: Arc<LinkService>, accepted: Accepted, conn_id: u64) {
    let Accepted {
        tls,
        peer,
        local,
        deadline,
        pending,
    } = accepted;
    // No client certificate: allowed only where agents enroll, and then
    // the connection may do nothing else.
    if tls.get_ref().1.peer_certificates().is_none() {
        match &svc.enroll {
            Some(enroller) => super::enroll::serve(enroller, tls, peer, deadline).await,
            None => {
                tracing::warn!(peer = %peer, "a connection without a client certificate got through; closed")
            }
        }
        drop(pending);
        return;
    }
    // Where the agent reached us is what it is told we are (`advertise`).
    let path = svc.advertiser.path(local, peer);
    let codec = FrameCodec::new(svc.config.max_frame_bytes);
    let proxy = gse_link::proxy::proxy_mark(tls.get_ref().1.peer_certificates());
    let mut link = Framed::with_capacity(tls, codec, READ_BUFFER);
    if let Some(cert_area) = proxy {
        super::proxied::serve(svc, link, (cert_area, path), (peer, deadline, pending)).await;
        return;
    }
    let reached = Reached {
        peer,
        port: local.port(),
        path,
    };
    // By reference: an async fn's by-value argument is kept twice in its
    // future, and a TLS link is over a kilobyte (18.9 against 17.5 KiB per
    // agent at 19,000 when it was passed by value).
    run_over(svc, &mut link, reached, (deadline, Some(pending)), conn_id).await;
}

/// Serves one agent over `link` (a direct link, or a channel relayed to
/// it), from its `Register` by `deadline` to the link's end. `pending` is
/// its place among the handshakes in progress, given up once registered.
pub(super) async fn run_over<L: AgentChannel>(
    svc: Arc<LinkService>,
    link: &mut L,
    reached: Reached,
    (deadline, pending): (Instant, Option<gse_link::ConnPermit>),
    conn_id: u64,
) {
    let (peer, path) = (reached.peer, reached.path);
    // Boxed so that its state is freed once it finishes, instead of
    // staying inside this long-lived task's future next to the link
    // (about 1.5 KB per agent).
    let Some((record, epoch, (p2p_addr, region, protocol), ack, joining)) =
        Box::pin(register(&svc, link, reached, deadline)).await
    else {
        return;
    };
    // Registered: no longer counted among the pending handshakes.
    drop(pending);
    let key = record.key;
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let close = svc.shutdown.child_token();
    let handover = Arc::new(super::handover::Slot::default());
    svc.attach(
        key,
        super::Session {
            conn_id,
            epoch,
            tx,
            close: close.clone(),
            zone: record.zone.clone(),
            p2p_addr,
            path,
            region,
            handover: handover.clone(),
            follows_handover: protocol >= gse_proto::HANDOVER_PROTOCOL_VERSION,
            proxied: link.cloud_area().is_some(),
            sealed: std::sync::atomic::AtomicBool::new(false),
            last_work_ms: std::sync::atomic::AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
        },
    );
    drop(joining);
    if let Err(e) = svc.store.upsert_agent(record.clone()).await {
        tracing::error!(agent = %key, error = %e, "cannot record the agent's registration");
    }
    if let Some(alarms) = &svc.alarms {
        alarms.agent_back(&record);
    }
    metrics::counter!("gse_link_registrations_total").increment(1);
    tracing::info!(agent = %key, agent_id = %record.agent_id, peer = %peer, version = %record.version, "agent registered");

    // The agent is told only now, once it is attached and recorded: whoever
    // sees its RegisterAck (the agent's next step, a test) finds it online.
    let reason = match link.send(ack).await {
        Ok(()) => {
            // The RegisterAck (with the danger rules) grew the write buffer
            // to a few KB; a long idle link needs far less.
            link.shrink_write_buffer(READ_BUFFER);
            serve(&svc, link, (key, conn_id), rx, (close, &handover)).await
        }
        Err(e) => format!("cannot send the RegisterAck: {e}"),
    };

    let sealed = svc.sealed(key, conn_id);
    if svc.detach(key, conn_id) {
        if sealed {
            // Sealed only once nothing was on its way to the agent and it
            // ran nothing: no role lost work on this claim. What was sent
            // since was refused as `Moving` and follows the agent; a plain
            // disconnect would fail a target whose refusal is still on its
            // way back instead.
            svc.notify_moved(key, epoch);
        } else {
            svc.notify_disconnect(key, epoch);
        }
        if reason == super::handover::HANDED_OVER && !svc.shutdown.is_cancelled() {
            tracing::info!(agent = %key, peer = %peer, to = %handover.to().unwrap_or_default(), "agent handed over; its claim here is kept until it registers there");
            svc.moved.insert(key, epoch);
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(super::handover::MOVE_GRACE) => {}
                    _ = svc.shutdown.cancelled() => {}
                }
                svc.moved.remove(key, epoch);
                moved_away(&svc, record, epoch).await;
            });
            return;
        }
        if !release(&svc, key, epoch).await {
            // A newer claim holds the agent (it registered on another
            // node): its record and its liveness are that holder's now;
            // only a holding node alarms.
            tracing::info!(agent = %key, peer = %peer, reason = %reason, "agent's stale link here ended; another node holds it");
            return;
        }
        let marked = svc
            .store
            .mark_offline(key, &svc.node_id, record.connected_at_ms)
            .await;
        if let Err(e) = marked {
            tracing::error!(agent = %key, error = %e, "cannot record the agent as offline");
        }
        tracing::info!(agent = %key, peer = %peer, reason = %reason, "agent disconnected");
        // A handed-over agent is on its way to another node, not lost.
        if let Some(alarms) = &svc.alarms
            && !svc.shutdown.is_cancelled()
            && handover.to().is_none()
        {
            alarms.agent_lost(record, reason, link.via());
        }
    }
}

/// [`super::handover::MOVE_GRACE`] after an agent was handed over: its
/// claim here ends, and if no newer claim took it meanwhile (it registered
/// nowhere), it is offline and lost.
async fn moved_away(svc: &LinkService, record: AgentRecord, epoch: Epoch) {
    let key = record.key;
    if !release(svc, key, epoch).await {
        tracing::debug!(agent = %key, "the handed-over agent registered again; its claim here was superseded");
        return;
    }
    if let Err(e) = svc
        .store
        .mark_offline(key, &svc.node_id, record.connected_at_ms)
        .await
    {
        tracing::error!(agent = %key, error = %e, "cannot record the agent as offline");
    }
    let reason = format!(
        "handed over to another node but registered nowhere within {}",
        humantime::format_duration(super::handover::MOVE_GRACE)
    );
    tracing::warn!(agent = %key, "{reason}");
    if let Some(alarms) = &svc.alarms
        && !svc.shutdown.is_cancelled()
    {
        // Handed over: never an agent behind a proxy, so probed from here.
        alarms.agent_lost(record, reason, Vec::new());
    }
}

/// Ends this node's claim `epoch` on the agent (if it is still the
/// current one: a newer claim, here or on another node, stays). False when
/// a newer claim had superseded it; a directory that cannot answer counts
/// as released (the agent is gone from here either way).
async fn release(svc: &LinkService, key: AgentKey, epoch: Epoch) -> bool {
    match svc.directory.release(key, epoch).await {
        Ok(released) => released,
        Err(e) => {
            tracing::error!(agent = %key, error = %e, "cannot release the agent's claim; the next claim supersedes it");
            true
        }
    }
}

/// One accepted connection: who it comes from and how it reached us.
pub(super) struct Reached {
    pub(super) peer: SocketAddr,
    /// Our port it arrived on (or the proxy's agents reach it on), told to
    /// the agent as `parent_port`.
    pub(super) port: u16,
    pub(super) path: AgentPath,
}

/// Reads and checks the first frame, which must be `Register`; refuses it
/// (answering why) or claims the agent and returns the record, the claim's
/// epoch and the accepting RegisterAck to send once the agent is attached.
async fn register<'s, L: AgentChannel>(
    svc: &'s LinkService,
    link: &mut L,
    reached: Reached,
    deadline: Instant,
) -> Option<(
    AgentRecord,
    Epoch,
    (Option<SocketAddr>, String, u32),
    Frame,
    super::Joining<'s>,
)> {
    let peer = reached.peer;
    let frame = match first_frame(link, deadline).await {
        Ok(frame) => frame,
        Err(FirstFrameError::Frame(e)) => {
            tracing::warn!(peer = %peer, error = %e, "bad first frame from agent; closing");
            return None;
        }
        Err(FirstFrameError::Closed) => return None,
        Err(FirstFrameError::Timeout) => {
            tracing::warn!(peer = %peer, "agent sent no Register within the handshake timeout; closing");
            return None;
        }
    };
    let area = link.cloud_area();
    let checked = match frame.msg_type {
        MsgType::Register => frame
            .decode::<Register>()
            .map_err(|e| e.to_string())
            .and_then(check)
            .and_then(|reg| match area {
                // A proxy relays only the agents of the area it serves.
                Some(area) if reg.key.cloud_id != area => Err(format!(
                    "agent {} is of cloud area {}, but registers through the proxy of cloud area {area}; connect it to its own area's proxy",
                    reg.key, reg.key.cloud_id
                )),
                _ => Ok(reg),
            }),
        other => Err(format!(
            "the first frame must be Register, got type {}",
            other.to_u16()
        )),
    };
    // Held once this node decides to take the agent (its load counts it).
    let mut joining = None;
    let checked = match checked {
        Ok(reg) => {
            let certificate = link.certificate_identity();
            match svc
                .admit(reg.key, &reg.msg.agent_id, certificate, peer)
                .await
            {
                Ok(()) => match redirect(svc, &reg.msg, link.cloud_area().is_some()) {
                    Some(to) => {
                        tracing::info!(agent = %reg.key, peer = %peer, to = %to, "redirecting a registering agent to a less loaded node");
                        metrics::counter!("gse_link_redirects_total").increment(1);
                        let message = format!(
                            "this node holds more than its share of agents; register with {to}"
                        );
                        let _ = link
                            .send(Frame::new(
                                MsgType::RegisterAck,
                                frame.stream_id,
                                &RegisterAck {
                                    accepted: false,
                                    message,
                                    node_id: svc.node_id.clone(),
                                    server_version: gse_core::VERSION.into(),
                                    redirect: to,
                                    ..RegisterAck::default()
                                },
                            ))
                            .await;
                        return None;
                    }
                    None => {
                        joining = Some(svc.joining());
                        claim(svc, reg, &link.via()).await
                    }
                },
                Err(message) => Err(message),
            }
        }
        Err(message) => Err(message),
    };
    let ack = |accepted: bool, message: String, data_endpoint: String| RegisterAck {
        accepted,
        message,
        node_id: svc.node_id.clone(),
        server_version: gse_core::VERSION.into(),
        heartbeat_interval_ms: svc.config.heartbeat_interval.as_millis() as u32,
        parent_ip: reached.path.parent_ip.to_string(),
        parent_port: u32::from(reached.port),
        danger_rules: if accepted {
            svc.danger_rules.clone()
        } else {
            Vec::new()
        },
        data_endpoint,
        redirect: String::new(),
    };
    match checked {
        Ok((reg, epoch)) => {
            let now = svc.connect_stamp();
            // The proxy host's own agent (it reaches its proxy from the
            // proxy's own address) is listed as the proxy (run_mode 0), as
            // the seed's FAQ has it; every other agent says what it is.
            let run_mode = if !link.via().is_empty() && reg.key.ip == reached.path.parent_ip {
                0
            } else {
                reg.msg.run_mode
            };
            let record = AgentRecord {
                key: reg.key,
                agent_id: reg.msg.agent_id,
                version: reg.msg.version,
                hostname: reg.msg.hostname,
                os_type: reg.msg.os_type,
                run_mode,
                zone: reg.msg.zone,
                start_time_s: reg.msg.start_time_s,
                node_id: svc.node_id.clone(),
                parent_ip: reached.path.parent_ip.to_string(),
                parent_port: reached.port,
                peer_addr: peer.to_string(),
                alive: true,
                connected_at_ms: now,
                last_seen_ms: now,
                cpu_percent: 0.0,
                mem_bytes: 0,
                mem_percent: 0.0,
                p2p_addr: reg.p2p_addr.map(|a| a.to_string()).unwrap_or_default(),
            };
            let accepted = Frame::new(
                MsgType::RegisterAck,
                frame.stream_id,
                &ack(
                    true,
                    String::new(),
                    // Behind a proxy, its proxy relays its data.
                    link.data_endpoint().unwrap_or_else(|| {
                        svc.data_endpoint(reg.key, epoch, reached.path, &reg.msg.region)
                    }),
                ),
            );
            let joining = joining.unwrap_or_else(|| svc.joining());
            Some((
                record,
                epoch,
                (reg.p2p_addr, reg.msg.region, reg.msg.protocol_version),
                accepted,
                joining,
            ))
        }
        Err(message) => {
            tracing::warn!(peer = %peer, "refusing agent registration: {message}");
            let _ = link
                .send(Frame::new(
                    MsgType::RegisterAck,
                    frame.stream_id,
                    &ack(false, message, String::new()),
                ))
                .await;
            None
        }
    }
}

/// Where a registering agent goes instead (K2, K5); never for one a node
/// already redirected here, so an agent cannot bounce between nodes, nor
/// for one behind a proxy, which reaches no node but through its proxy.
fn redirect(svc: &LinkService, msg: &Register, proxied: bool) -> Option<String> {
    if msg.redirected || proxied {
        return None;
    }
    svc.redirect(&msg.region)
}

/// Claims the admitted agent for this node; the epoch fences every later
/// write about it. The error (the directory is down) refuses the
/// registration: the agent retries.
async fn claim(
    svc: &LinkService,
    reg: CheckedRegister,
    via: &[String],
) -> Result<(CheckedRegister, Epoch), String> {
    match svc.directory.claim(reg.key, &svc.node_id, via).await {
        Ok(epoch) => Ok((reg, epoch)),
        Err(e) => {
            tracing::error!(agent = %reg.key, error = %e, "cannot claim a registering agent");
            Err(format!(
                "the server cannot record that it holds this agent ({e}); the agent retries"
            ))
        }
    }
}

struct CheckedRegister {
    key: AgentKey,
    p2p_addr: Option<SocketAddr>,
    msg: Register,
}

/// Validates what the agent claims about itself (its identity:
/// `gse_link::claim`); the error says what to fix.
fn check(msg: Register) -> Result<CheckedRegister, String> {
    let key =
        claimed_key(&msg.agent_id, msg.cloud_id, &msg.identity_ip).map_err(|e| e.to_string())?;
    for (name, value) in [
        ("version", &msg.version),
        ("hostname", &msg.hostname),
        ("os_type", &msg.os_type),
        ("zone", &msg.zone),
        ("region", &msg.region),
    ] {
        if value.len() > 256 {
            return Err(format!("{name} is {} bytes long; at most 256", value.len()));
        }
    }
    let p2p_addr = match msg.p2p_addr.as_str() {
        "" => None,
        text => {
            let addr: SocketAddr = text.parse().map_err(|_| {
                format!("p2p_addr {text:?} is not ip:port; fix [file] p2p_advertise in the agent's config")
            })?;
            // A listener on 0.0.0.0 is reached at the identity IP.
            Some(if addr.ip().is_unspecified() {
                SocketAddr::new(key.ip, addr.port())
            } else {
                addr
            })
        }
    };
    Ok(CheckedRegister { key, p2p_addr, msg })
}

/// Serves a registered link until it ends; returns why it ended.
///
/// Every write is bounded by `heartbeat_timeout`: an agent that stops
/// reading (stopped process, paused VM) must not hold this task forever
/// while its heartbeat deadline goes unchecked.
async fn serve<L: AgentChannel>(
    svc: &LinkService,
    link: &mut L,
    (key, conn_id): (AgentKey, u64),
    mut outbound: mpsc::Receiver<Box<Frame>>,
    (close, handover): (CancellationToken, &super::handover::Slot),
) -> String {
    let timeout = svc.config.heartbeat_timeout;
    let mut deadline = Instant::now() + timeout;
    // Frames written to the agent since the RegisterAck; the agent counts
    // the ones it read, so a hand-over can tell none is on its way.
    let mut written: u64 = 0;
    loop {
        tokio::select! {
            _ = close.cancelled() => {
                let redirect = handover.to().unwrap_or_default();
                let reason = if svc.shutdown.is_cancelled() {
                    "server shutting down"
                } else if svc.is_stale(key, conn_id) {
                    STALE
                } else if !redirect.is_empty() {
                    super::handover::HANDED_OVER
                } else {
                    "replaced by a newer connection"
                };
                let goodbye = Frame::new(MsgType::Goodbye, 0, &Goodbye { reason: reason.into(), redirect });
                let _ = send_within(link, goodbye, timeout).await;
                return reason.into();
            }
            _ = tokio::time::sleep_until(deadline) => {
                return format!("no heartbeat for {}", humantime::format_duration(timeout));
            }
            Some(frame) = outbound.recv() => {
                let limit = svc.config.max_frame_bytes;
                if frame.body.len() > limit {
                    // The codec would refuse it and end the link; only this
                    // frame is lost.
                    metrics::counter!("gse_link_frames_too_large_total").increment(1);
                    tracing::error!(agent = %key, msg_type = frame.msg_type.to_u16(), bytes = frame.body.len(), limit, "dropping a frame for the agent over link.max_frame_bytes");
                    continue;
                }
                if let Err(reason) = send_within(link, *frame, timeout).await {
                    return reason;
                }
                written += 1;
            }
            next = link.next() => {
                let frame = match next {
                    None => return "connection closed by the agent".into(),
                    Some(Err(e)) => return format!("connection error: {e}"),
                    Some(Ok(frame)) => frame,
                };
                deadline = Instant::now() + timeout;
                let heartbeat = frame.msg_type == MsgType::Heartbeat;
                if frame.msg_type == MsgType::HandOverReady {
                    if let Some(reason) = super::handover::ready(svc, link, (key, conn_id), &frame, written).await {
                        return reason;
                    }
                    continue;
                }
                if let Some(reason) = on_frame(svc, link, key, frame).await {
                    return reason;
                }
                if heartbeat {
                    // Its HeartbeatAck.
                    written += 1;
                }

            }
        }
    }
}

/// Writes one frame, giving up after `limit`; the error is why the link ends.
pub(super) async fn send_within<L: AgentChannel>(
    link: &mut L,
    frame: Frame,
    limit: Duration,
) -> Result<(), String> {
    gse_link::session::send_within(link, frame, limit)
        .await
        .map_err(|e| match e {
            WriteError::Failed(e) => format!("send failed: {e}"),
            WriteError::TimedOut(limit) => format!(
                "a write to the agent did not complete within {}",
                humantime::format_duration(limit)
            ),
        })
}

/// Counts what the agent says it dropped and alarms when it grew
/// (`data_drops.rs`).
fn data_dropped(svc: &LinkService, key: AgentKey, hb: &Heartbeat) {
    let Some(g) = svc.data_drops.observe(
        key,
        hb.data_spool_dropped_batches,
        hb.data_lost_records,
        now_ms(),
    ) else {
        return;
    };
    metrics::counter!("gse_data_agent_spool_dropped_batches_total").increment(g.batches);
    metrics::counter!("gse_data_agent_lost_records_total").increment(g.records);
    if let (true, Some(alarms)) = (g.alarm, &svc.alarms) {
        alarms.raise(Alarm::about_agent_key(
            AlarmKind::DataDropped,
            &svc.node_id,
            key,
            format!(
                "agent {key} dropped data: {} spooled batches since it started (its spool was full: raise [data] spool_max_mb on the agent or restore its DataServer link) and {} records lost otherwise (see the agent's log)",
                hb.data_spool_dropped_batches, hb.data_lost_records
            ),
        ));
    }
}

/// The agent's watchdog restarted its worker: one `agent_restarted` alarm
/// (and count) per restart.
fn agent_restarted(svc: &LinkService, key: AgentKey, hb: &Heartbeat) {
    if !svc.restarts.is_new(key, hb.restarted_at_ms) {
        return;
    }
    metrics::counter!("gse_link_agent_restarts_total").increment(1);
    // Agent input: bounded before it reaches a log line or an alarm.
    let reason: String = hb.restart_reason.chars().take(1024).collect();
    tracing::warn!(agent = %key, restarts = hb.restarts, reason = %reason, "the agent's watchdog restarted its worker");
    if let Some(alarms) = &svc.alarms {
        alarms.raise(Alarm::about_agent_key(
            AlarmKind::AgentRestarted,
            &svc.node_id,
            key,
            format!(
                "agent {key}'s watchdog restarted its worker (restart {} since the watchdog started): {reason}",
                hb.restarts
            ),
        ));
    }
}

/// Handles one frame from a registered agent; `Some(reason)` ends the link.
async fn on_frame<L: AgentChannel>(
    svc: &LinkService,
    link: &mut L,
    key: AgentKey,
    frame: Frame,
) -> Option<String> {
    let timeout = svc.config.heartbeat_timeout;
    match frame.msg_type {
        MsgType::Heartbeat => {
            let hb = match frame.decode::<Heartbeat>() {
                Ok(hb) => hb,
                Err(e) => return Some(protocol_error(link, e.to_string(), timeout).await),
            };
            let update = HeartbeatUpdate {
                key,
                at_ms: now_ms(),
                cpu_percent: hb.cpu_percent,
                mem_bytes: hb.mem_bytes,
                mem_percent: hb.mem_percent,
            };
            if svc.heartbeats.try_send(update).is_err() {
                metrics::counter!("gse_link_heartbeats_dropped_total").increment(1);
            }
            data_dropped(svc, key, &hb);
            agent_restarted(svc, key, &hb);
            let ack = HeartbeatAck {
                seq: hb.seq,
                server_time_ms: now_ms(),
            };
            let ack = Frame::new(MsgType::HeartbeatAck, frame.stream_id, &ack);
            send_within(link, ack, timeout).await.err()
        }
        MsgType::Goodbye => {
            let reason = frame
                .decode::<Goodbye>()
                .map(|g| g.reason)
                .unwrap_or_default();
            Some(format!("agent shut down ({reason})"))
        }
        MsgType::Register => Some(
            protocol_error(
                link,
                "Register sent twice on one connection".into(),
                timeout,
            )
            .await,
        ),
        other => {
            if let Err(frame) = svc.route_frame(key, frame).await {
                tracing::debug!(agent = %key, msg_type = other.to_u16(), stream = frame.stream_id, "ignoring a frame type this node does not handle");
            }
            None
        }
    }
}

async fn protocol_error<L: AgentChannel>(link: &mut L, message: String, limit: Duration) -> String {
    let frame = Frame::new(
        MsgType::LinkError,
        0,
        &LinkError {
            code: 400,
            message: message.clone(),
        },
    );
    let _ = send_within(link, frame, limit).await;
    format!("protocol error: {message}")
}

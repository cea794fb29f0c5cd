//! The agent's one long-lived link to its upstream node.
//!
//! [`run`] loops: dial (TCP with keepalive, then mutual TLS:
//! `gse_link::Dialer`) -> register -> heartbeat until the link ends ->
//! wait a jittered backoff -> again.
//! Certificate problems are explained in one log line per attempt; in TLS
//! 1.3 the server's refusal of our certificate only shows on the first read,
//! so the Register answer is where it is reported. A link counts as dead when
//! nothing came back for three heartbeat periods, even if TCP has not noticed.
//!
//! Each session also carries tasks: `RunScript`/`CancelTask` frames go to a
//! [`TaskRunner`] built with the dangerous-operation rules from the
//! `RegisterAck`, and its `TaskOutput`/`TaskStatus` frames come back through
//! an outbound queue that the session loop writes to the link. When the
//! session ends for any reason (lost link, server goodbye, shutdown), every
//! task is cancelled and its process tree killed before reconnecting: the
//! server fails a lost agent's unfinished atomic tasks with 117 at once, so
//! work must not go on unreported.
//!
//! Frames go to their role by family (`gse_proto::MsgFamily`). File
//! transfer frames (`MsgFamily::File`) go the same way to a
//! [`FileRunner`], whose frames come back through a queue of their own
//! (bounded, and piece frames hold a permit until written), so bulk file
//! work waits for the link, never the heartbeats. The P2P listener
//! ([`FileService`]) is bound once, before the first connection, and its
//! address is registered as `p2p_addr`; file tasks end with the session.
//!
//! Balance (K2): a `RegisterAck` refusing with a `redirect`, or a
//! `Goodbye` with one, names the node to register with next; the agent goes
//! there at once, with `Register.redirected` set (that node takes it without
//! redirecting it again), and back to its own server list if that fails.
//! A node that hands this agent over sends `HandOver` first and the agent
//! moves only once nothing runs here ([`handover`]), so no work ends.
//! `Register.region` carries `[agent] region` (K5).
//!
//! Plugin frames (`MsgFamily::Proc`) go to the [`PluginService`], which lives
//! across sessions (plugins are supervised while the link is down); each
//! session attaches a queue for its results and status reports. Plugin
//! messages (`MsgFamily::PluginMessage`) go to the plugin-message socket's
//! hub (`crate::data::message_ipc::MessageHub`) the same way.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gse_core::seams::Executor;
use gse_link::session::{ClientSession as Link, FirstFrameError, WriteError, first_frame};
use gse_link::{Backoff, DialError, Dialer, DialerParts, net_hint};
use gse_proto::link::{Goodbye, Heartbeat, LinkError, Register, RegisterAck};
use gse_proto::{Frame, FrameCodec, LINK_PROTOCOL_VERSION, MsgFamily, MsgType};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::data::DataPlane;
use crate::file::{FileRunner, FileService, LinkOut};
use crate::identity::AgentIdentity;
use crate::plugin::PluginService;
use crate::stats::SelfStats;
use crate::task::{TaskRunner, policy};

mod handover;

/// A link that stayed registered this long resets the backoff, so one flap
/// does not leave the agent offline for the longest delay after the next
/// short outage; a server that drops agents right after registering them
/// still meets a growing delay.
const STABLE_AFTER: Duration = Duration::from_secs(3);
/// Missed heartbeat answers before the link is declared dead.
const MISSED_ACKS: u32 = 3;
/// Task frames queued for the link; a full queue slows the tasks' output
/// (and so their processes), never the heartbeats.
const OUTBOUND_FRAMES: usize = 256;

/// File frames queued for the link (progress, manifests, requests, and a
/// few piece answers).
const FILE_OUTBOUND_FRAMES: usize = 64;

/// Plugin-message frames queued for the link (acks, plugins' messages).
const MESSAGE_OUTBOUND_FRAMES: usize = 256;

/// What to check when nothing answers at an upstream address.
const UNANSWERED: &str = "is gse-server running and link.listen reachable?";

/// How a session ended.
enum End {
    /// We are shutting down; do not reconnect.
    Shutdown,
    /// The link was lost after working for a while; reconnect.
    Lost(String),
    /// The node handed this agent over to another node (K2): register
    /// there next.
    Redirect { to: String, reason: String },
}

/// What a connection attempt came to.
enum Attempt {
    Registered(Box<Registered>),
    /// The node holds more than its share of agents (K2) and names the
    /// node to register with instead.
    Redirect {
        to: String,
        message: String,
    },
}

/// Why a connection attempt failed, already put in words.
struct AttemptError(String);

/// Runs the link until `shutdown`; tasks run through `executor`.
pub async fn run(
    cfg: Arc<AgentConfig>,
    identity: AgentIdentity,
    executor: Arc<dyn Executor>,
    data: Option<Arc<DataPlane>>,
    mut restart: Option<crate::watchdog::Restart>,
    shutdown: CancellationToken,
) {
    let tls = match gse_core::tls::upstream_client_config(&cfg.tls, cfg.agent.cloud_id) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!("cannot load the agent's TLS material: {e}");
            return;
        }
    };
    let dialer = Dialer::new(DialerParts {
        tls,
        tls_files: cfg.tls.clone(),
        server_name: cfg.upstream.server_name.clone(),
        bind_ip: cfg.upstream.bind_ip,
        connect_timeout: cfg.upstream.connect_timeout,
        keepalive: true,
    });
    let files = match FileService::start(&cfg, shutdown.clone()).await {
        Ok(files) => files,
        Err(e) => {
            tracing::error!("cannot start file transfer: {e}");
            return;
        }
    };
    // Plugins are supervised whether or not a link is up.
    let plugins = PluginService::start(&cfg, shutdown.clone());
    let mut backoff = Backoff::new(cfg.upstream.backoff_initial, cfg.upstream.backoff_max);
    let mut stats = SelfStats::new();
    // Said in the heartbeats of this worker's first session only.
    let mut said_restart = restart.take();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut attempt: usize = 0;
    // Where a node sent this agent (K2): tried once, before the list; a
    // redirected Register is accepted there without a further redirect,
    // so this never loops.
    let mut redirect: Option<String> = None;
    loop {
        let redirected = redirect.is_some();
        let server = match redirect.take() {
            Some(to) => to,
            None => {
                attempt += 1;
                cfg.upstream.servers[(attempt - 1) % cfg.upstream.servers.len()].clone()
            }
        };
        let server = &server;
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = connect(&cfg, &dialer, (server, redirected), &identity, started, &files) => o,
        };
        match outcome {
            Ok(Attempt::Redirect { to, message }) => {
                tracing::info!(server = %server, to = %to, "the server redirects this agent: {message}");
                redirect = Some(to);
                // At once: the node named is up and less loaded.
                continue;
            }
            Ok(Attempt::Registered(registered)) => {
                let Registered {
                    mut link,
                    ack,
                    agent,
                    p2p_addr,
                } = *registered;
                if let Some(data) = &data {
                    data.control_registered(server, &ack.data_endpoint, &agent);
                }
                tracing::info!(
                    server = %server, node = %ack.node_id, agent = %agent,
                    p2p_addr = %if p2p_addr.is_empty() { "(none)" } else { &p2p_addr },
                    "connected and registered"
                );
                let registered = Instant::now();
                let (file_tx, file_rx) = mpsc::channel(FILE_OUTBOUND_FRAMES);
                let file_runner = files.runner(file_tx, agent);
                let files = (file_runner, file_rx);
                let served = serve(
                    &mut link,
                    &ack,
                    (&mut stats, said_restart.take()),
                    &shutdown,
                    &executor,
                    files,
                    &plugins,
                    data.clone(),
                );
                match served.await {
                    End::Shutdown => return,
                    End::Lost(reason) => {
                        tracing::warn!(server = %server, reason = %reason, "link to the server lost; reconnecting");
                    }
                    End::Redirect { to, reason } => {
                        tracing::info!(server = %server, to = %to, reason = %reason, "the server hands this agent over to another node");
                        redirect = Some(to);
                        // The node paces its hand-overs (bounded rate,
                        // jitter), so going at once makes no storm.
                        continue;
                    }
                }
                if registered.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
            }
            Err(AttemptError(text)) => tracing::warn!(server = %server, "cannot connect: {text}"),
        }
        let delay = backoff.next_delay();
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "waiting before the next connection attempt"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A registered link.
struct Registered {
    link: Link,
    ack: RegisterAck,
    /// This agent as peers know it, "cloud:ip".
    agent: String,
    /// What went in `Register.p2p_addr` ("" = no P2P listener).
    p2p_addr: String,
}

/// TCP + TLS + Register; returns the link and the server's answer.
async fn connect(
    cfg: &AgentConfig,
    dialer: &Dialer,
    (server, redirected): (&str, bool),
    identity: &AgentIdentity,
    started: u64,
    files: &FileService,
) -> Result<Attempt, AttemptError> {
    let limit = cfg.upstream.connect_timeout;
    let tls = dialer
        .dial(server)
        .await
        .map_err(|e| AttemptError(dial_failed(server, e)))?;
    let local_ip = tls.get_ref().0.local_addr().map(|a| a.ip()).ok();
    let explain_io = |e: std::io::Error| {
        AttemptError(
            dialer
                .explain(server, &e)
                .unwrap_or_else(|| format!("TLS connection failed: {e}")),
        )
    };
    let mut link = Framed::new(tls, FrameCodec::default());

    let identity_ip = cfg.agent.identity_ip.or(local_ip);
    let p2p_addr = files
        .p2p_addr(identity_ip)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let identity_ip = identity_ip.map(|ip| ip.to_string()).unwrap_or_default();
    // How peers know this agent ("cloud:ip"), for PeerHello.
    let agent = format!("{}:{}", identity.cloud_id, identity_ip);
    let register = Register {
        agent_id: identity.agent_id.clone(),
        cloud_id: identity.cloud_id,
        identity_ip,
        version: gse_core::VERSION.into(),
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        os_type: std::env::consts::OS.into(),
        start_time_s: started,
        zone: cfg.agent.zone.clone(),
        run_mode: 1,
        protocol_version: LINK_PROTOCOL_VERSION,
        p2p_addr: p2p_addr.clone(),
        region: cfg.agent.region.clone(),
        redirected,
    };
    link.send(Frame::new(MsgType::Register, 1, &register))
        .await
        .map_err(|e| AttemptError(format!("cannot send Register: {e}")))?;
    let frame = match first_frame(&mut link, Instant::now() + limit).await {
        Ok(frame) => frame,
        Err(FirstFrameError::Timeout) => {
            return Err(AttemptError(format!(
                "no answer to Register within {limit:?}"
            )));
        }
        Err(FirstFrameError::Closed) => {
            return Err(AttemptError(
                "the server closed the connection before answering Register".into(),
            ));
        }
        Err(FirstFrameError::Frame(gse_proto::FrameError::Io(e))) => return Err(explain_io(e)),
        Err(FirstFrameError::Frame(e)) => {
            return Err(AttemptError(format!("bad answer to Register: {e}")));
        }
    };
    match frame.msg_type {
        MsgType::RegisterAck => {
            let ack: RegisterAck = frame.decode().map_err(|e| AttemptError(e.to_string()))?;
            if ack.accepted {
                Ok(Attempt::Registered(Box::new(Registered {
                    link,
                    ack,
                    agent,
                    p2p_addr,
                })))
            } else if !ack.redirect.is_empty() && !redirected {
                Ok(Attempt::Redirect {
                    to: ack.redirect,
                    message: ack.message,
                })
            } else {
                Err(AttemptError(format!(
                    "the server refused our registration: {}",
                    ack.message
                )))
            }
        }
        MsgType::LinkError => {
            let err: LinkError = frame.decode().map_err(|e| AttemptError(e.to_string()))?;
            Err(AttemptError(format!(
                "the server reported a protocol error: {}",
                err.message
            )))
        }
        other => Err(AttemptError(format!(
            "unexpected answer to Register (type {})",
            other.to_u16()
        ))),
    }
}

/// A failed dial in the control link's words: what to check, and the
/// config key to fix where there is one.
fn dial_failed(server: &str, e: DialError) -> String {
    match e {
        DialError::Connect { addr, source } => {
            net_hint::connect_failed(&addr.to_string(), &source, UNANSWERED)
        }
        DialError::ConnectTimeout { limit, .. } => {
            format!("no TCP connection to {server} within {limit:?} ({UNANSWERED})")
        }
        DialError::Bind { ip, source } => {
            format!("cannot bind to upstream.bind_ip {ip}: {source}")
        }
        DialError::ServerName { name, reason } => {
            format!("upstream.server_name {name:?} is not a valid name: {reason}")
        }
        DialError::Tls {
            source, explained, ..
        } => explained.unwrap_or_else(|| format!("TLS connection failed: {source}")),
        DialError::TlsTimeout { limit, .. } => format!("no TLS handshake within {limit:?}"),
        other => other.to_string(),
    }
}

/// Runs one session with its own task and file runners; when it ends,
/// every task is cancelled (and its processes killed) and every file task
/// stopped (temp files removed) before the next connection.
// One parameter per service a session feeds; grouping them would only hide that.
#[allow(clippy::too_many_arguments)]
async fn serve(
    link: &mut Link,
    ack: &RegisterAck,
    (stats, restart): (&mut SelfStats, Option<crate::watchdog::Restart>),
    shutdown: &CancellationToken,
    executor: &Arc<dyn Executor>,
    (files, file_rx): (FileRunner, mpsc::Receiver<LinkOut>),
    plugins: &PluginService,
    data: Option<Arc<DataPlane>>,
) -> End {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
    let (plugin_tx, plugin_rx) = mpsc::channel(crate::plugin::OUTBOUND_FRAMES);
    let (message_tx, message_rx) = mpsc::channel(MESSAGE_OUTBOUND_FRAMES);
    let policy = policy::from_register_ack(&ack.danger_rules);
    plugins.attach(plugin_tx, Arc::new(policy.clone()));
    attach_messages(data.as_deref(), Some(message_tx));
    let runner = TaskRunner::new(executor.clone(), policy, out_tx);
    let queues = Outbound {
        tasks: out_rx,
        files: file_rx,
        plugins: plugin_rx,
        messages: message_rx,
        data: data.clone(),
    };
    let runners = (&runner, &files, plugins);
    let said = Said { stats, restart };
    let end = session(link, ack, said, shutdown, runners, queues).await;
    plugins.detach();
    attach_messages(data.as_deref(), None);
    // The outbound queues' receivers went with the session, so cancelled
    // tasks cannot block on their last frames.
    tokio::join!(runner.cancel_all(), files.cancel_all());
    end
}

/// The queues a session writes to the link besides its heartbeats.
struct Outbound {
    tasks: mpsc::Receiver<Frame>,
    files: mpsc::Receiver<LinkOut>,
    plugins: mpsc::Receiver<Frame>,
    /// Plugin messages' acks, and plugins' messages for the server.
    messages: mpsc::Receiver<Frame>,
    /// Where `DataAssign` frames go (D4), and plugin messages; `None`
    /// without a data path.
    data: Option<Arc<DataPlane>>,
}

/// One registered session: heartbeats, and task frames both ways, until the
/// link ends or we shut down. Frames still queued in `outbound` when the
/// link ends are dropped (the server fails those tasks with 117).
async fn session(
    link: &mut Link,
    ack: &RegisterAck,
    mut said: Said<'_>,
    shutdown: &CancellationToken,
    (tasks, files, plugins): (&TaskRunner, &FileRunner, &PluginService),
    mut outbound: Outbound,
) -> End {
    let period = Duration::from_millis(u64::from(ack.heartbeat_interval_ms.max(100)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing else in this loop is polled while a write is pending, so a
    // server that stops reading must not hold the session forever.
    let write_limit = period * MISSED_ACKS;
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    // Frames read since the RegisterAck, and the node's request to move.
    let mut received = 0u64;
    let mut handover = handover::HandOverState::default();
    let mut idle_check = tokio::time::interval(handover::IDLE_CHECK);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                say_goodbye(link).await;
                return End::Shutdown;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > period * MISSED_ACKS {
                    return End::Lost(format!("no answer from the server for {:?}", last_heard.elapsed()));
                }
                seq += 1;
                let frame = heartbeat(seq, &mut said, outbound.data.as_deref());
                if let Err(end) = send_within(link, frame, write_limit, shutdown, "a heartbeat").await {
                    return end;
                }
            }
            Some(frame) = outbound.tasks.recv() => {
                if let Err(end) = send_within(link, frame, write_limit, shutdown, "a task frame").await {
                    return end;
                }
            }
            Some(out) = outbound.files.recv() => {
                // The permit (if any) is released once the frame is written.
                if let Err(end) = send_within(link, out.frame, write_limit, shutdown, "a file frame").await {
                    return end;
                }
            }
            Some(frame) = outbound.plugins.recv() => {
                if let Err(end) = send_within(link, frame, write_limit, shutdown, "a plugin frame").await {
                    return end;
                }
            }
            Some(frame) = outbound.messages.recv() => {
                if let Err(end) = send_within(link, frame, write_limit, shutdown, "a plugin message frame").await {
                    return end;
                }
            }
            _ = idle_check.tick(), if handover.is_pending() => {
                // Final frames still queued are results the node has not
                // seen yet: not idle until they are written.
                let idle = tasks.live() == 0
                    && files.live() == 0
                    && plugins.operating() == 0
                    && outbound.tasks.is_empty()
                    && outbound.files.is_empty()
                    && outbound.plugins.is_empty();
                if let Some(frame) = handover.ready(idle, received, Instant::now())
                    && let Err(end) = send_within(link, frame, write_limit, shutdown, "a hand-over answer").await
                {
                    return end;
                }
            }
            next = link.next() => {
                let frame = match next {
                    None => return End::Lost("the server closed the connection".into()),
                    Some(Err(e)) => return End::Lost(format!("connection error: {e}")),
                    Some(Ok(frame)) => frame,
                };
                last_heard = Instant::now();
                received += 1;
                if frame.msg_type == MsgType::HandOver {
                    handover.asked(&frame, Instant::now());
                    continue;
                }
                if frame.msg_type == MsgType::DataAssign {
                    data_assign(&frame, outbound.data.as_deref());
                    continue;
                }
                if frame.msg_type.family() == Some(MsgFamily::PluginMessage) {
                    if let Some(answer) = plugin_message(&frame, outbound.data.as_deref())
                        && let Err(end) = send_within(link, answer, write_limit, shutdown, "a plugin message's answer").await
                    {
                        return end;
                    }
                    continue;
                }
                if let Some(end) = on_frame(frame, tasks, files, plugins) {
                    return end;
                }
            }
        }
    }
}

/// Lets the plugin-message socket's plugins reach the server through `tx`
/// (`None`: the session ended).
#[cfg_attr(not(unix), allow(unused_variables))]
fn attach_messages(data: Option<&DataPlane>, tx: Option<mpsc::Sender<Frame>>) {
    #[cfg(unix)]
    if let Some(data) = data {
        match tx {
            Some(tx) => data.messages.attach(tx),
            None => data.messages.detach(),
        }
    }
}

/// A plugin message from the node (COMPAT §1.3): handed to the
/// plugin-message socket, which answers on the link's message queue; an
/// agent without the socket answers here at once.
#[cfg_attr(not(unix), allow(unused_variables))]
fn plugin_message(frame: &Frame, data: Option<&DataPlane>) -> Option<Frame> {
    #[cfg(unix)]
    if let Some(data) = data {
        if !data.messages.handle(frame) {
            tracing::debug!(
                msg_type = frame.msg_type.to_u16(),
                "ignoring a plugin-message frame type this agent does not handle"
            );
        }
        return None;
    }
    let message_id = frame
        .decode::<gse_proto::link::PluginMessage>()
        .map(|m| m.message_id)
        .unwrap_or_default();
    let ack = gse_proto::link::PluginMessageAck {
        message_id,
        code: gse_proto::plugin_message::NOT_CONNECTED,
        message: "this agent has no plugin-message socket".into(),
        connections: 0,
    };
    Some(Frame::new(MsgType::PluginMessageAck, frame.stream_id, &ack))
}

/// Writes `frame` (`what`, for the log), giving up after `limit` or on
/// shutdown; `Err` ends the session. An abandoned write may leave half a
/// frame on the link, so the link is not used again either way.
async fn send_within(
    link: &mut Link,
    frame: Frame,
    limit: Duration,
    shutdown: &CancellationToken,
    what: &str,
) -> Result<(), End> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        sent = gse_link::session::send_within(link, frame, limit) => match sent {
            Ok(()) => Ok(()),
            Err(WriteError::Failed(e)) => Err(End::Lost(format!("cannot send {what}: {e}"))),
            Err(WriteError::TimedOut(limit)) => Err(End::Lost(format!(
                "a write to the server did not complete within {}s ({what}); \
                 the server or the network stopped reading",
                limit.as_secs_f64()
            ))),
        },
    }
}

/// What the agent says of itself in a session's heartbeats.
struct Said<'a> {
    stats: &'a mut SelfStats,
    /// Why the watchdog restarted this worker (its first session only).
    restart: Option<crate::watchdog::Restart>,
}

fn heartbeat(seq: u64, said: &mut Said<'_>, data: Option<&DataPlane>) -> Frame {
    let s = said.stats.sample();
    let drops = data.map(|d| d.stats.snapshot()).unwrap_or_default();
    let restart = said.restart.clone().unwrap_or_default();
    let hb = Heartbeat {
        seq,
        time_ms: gse_core::now_ms(),
        cpu_percent: s.cpu_percent,
        mem_bytes: s.mem_bytes,
        mem_percent: s.mem_percent,
        data_spool_dropped_batches: drops.spool_dropped_batches,
        data_lost_records: drops.lost_records,
        restart_reason: restart.reason,
        restarted_at_ms: restart.at_ms,
        restarts: restart.restarts,
    };
    Frame::new(MsgType::Heartbeat, 0, &hb)
}

/// Hands a `DataAssign` (the node moved this agent to another DataServer,
/// D4) to the data path.
fn data_assign(frame: &Frame, data: Option<&DataPlane>) {
    match (frame.decode::<gse_proto::link::DataAssign>(), data) {
        (Ok(assign), Some(data)) => data.reassigned(&assign.endpoint, &assign.reason),
        (Ok(_), None) => tracing::debug!("DataAssign ignored: this agent has no data path"),
        (Err(e), _) => tracing::warn!(error = %e, "ignoring a bad DataAssign frame"),
    }
}

/// Tells the server we are leaving, without waiting long for it.
async fn say_goodbye(link: &mut Link) {
    let bye = Frame::new(
        MsgType::Goodbye,
        0,
        &Goodbye {
            reason: "agent stopping".into(),
            ..Goodbye::default()
        },
    );
    let _ = timeout(Duration::from_secs(2), async {
        let _ = link.send(bye).await;
        let _ = link.get_mut().shutdown().await;
    })
    .await;
}

/// Handles one frame from the server by its family; `Some` ends the
/// session.
fn on_frame(
    frame: Frame,
    tasks: &TaskRunner,
    files: &FileRunner,
    plugins: &PluginService,
) -> Option<End> {
    let family = frame.msg_type.family();
    let handled = match family {
        Some(MsgFamily::Link) => return on_link_frame(frame),
        Some(MsgFamily::Task) => tasks.handle(&frame),
        Some(MsgFamily::File) => files.handle(&frame),
        Some(MsgFamily::Proc) => plugins.handle(&frame),
        _ => false,
    };
    if !handled {
        tracing::debug!(
            msg_type = frame.msg_type.to_u16(),
            family = ?family,
            "ignoring a frame type this agent does not handle"
        );
    }
    None
}

/// A frame of the link itself: an answer, or why the server ends the link.
fn on_link_frame(frame: Frame) -> Option<End> {
    match frame.msg_type {
        MsgType::Goodbye => {
            let bye = frame.decode::<Goodbye>().unwrap_or_default();
            if bye.redirect.is_empty() {
                Some(End::Lost(format!(
                    "the server said goodbye: {}",
                    bye.reason
                )))
            } else {
                Some(End::Redirect {
                    to: bye.redirect,
                    reason: bye.reason,
                })
            }
        }
        MsgType::LinkError => {
            let message = frame
                .decode::<LinkError>()
                .map(|e| e.message)
                .unwrap_or_default();
            Some(End::Lost(format!(
                "the server reported a protocol error: {message}"
            )))
        }
        // HeartbeatAck: hearing anything is what counts.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goodbye(redirect: &str) -> Frame {
        let bye = Goodbye {
            reason: "handed over".into(),
            redirect: redirect.into(),
        };
        Frame::new(MsgType::Goodbye, 0, &bye)
    }

    #[test]
    fn a_goodbye_with_a_redirect_names_the_next_node() {
        match on_link_frame(goodbye("127.0.0.9:28668")) {
            Some(End::Redirect { to, reason }) => {
                assert_eq!(to, "127.0.0.9:28668");
                assert_eq!(reason, "handed over");
            }
            _ => panic!("expected a redirect"),
        }
        assert!(matches!(on_link_frame(goodbye("")), Some(End::Lost(_))));
    }
}

//! One data link to a DataServer: TCP, mutual TLS (the agent's certificate,
//! as on the control link; both dialed by `gse_link::Dialer`),
//! `DataHello` -> `DataHelloAck`, then a writer
//! task and a reader task. The uplink talks to them through channels and
//! learns of acks and of the link's end as [`Event`]s. Dropping a [`Conn`]
//! stops both tasks and closes the socket.
//!
//! The writer takes whole encoded frames (`DataBatch` frames are built by
//! [`BatchBuf`](crate::data::wire::BatchBuf)) and writes them straight into
//! the TLS stream, flushing once per burst: no codec buffer in between.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gse_link::net_hint::ConnectFailure;
use gse_link::session::{FirstFrameError, first_frame};
use gse_link::{DialError, Dialer as TransportDialer};
use gse_proto::link::{DataAck, DataHello, DataHelloAck};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::target::Target;

/// Most encrypted bytes rustls holds for the socket. Above the default
/// (64 KiB) so that a whole batch frame is taken in one write and leaves in
/// few large `writev`s instead of 64 KiB pieces plus a small tail each.
const TLS_SEND_BUFFER: usize = 1024 * 1024;

/// Version of the data link protocol sent in `DataHello`.
pub const DATA_PROTOCOL_VERSION: u32 = 1;

/// What the reader and writer report.
#[derive(Debug)]
pub enum Event {
    Ack(DataAck),
    /// The link ended; the text says why.
    Closed(String),
}

/// How to reach DataServers.
#[derive(Clone)]
pub struct Dialer {
    /// TCP and TLS, with `upstream.server_name` and `connect_timeout`.
    pub transport: TransportDialer,
    pub hello: DataHello,
    /// Frames queued for the writer (the in-flight window).
    pub queue: usize,
}

/// A live data link.
pub struct Conn {
    pub endpoint: String,
    pub server_id: String,
    /// Largest batch body the server takes (0 = no limit given).
    pub max_batch_bytes: usize,
    /// Whole encoded frames to write.
    pub frames: mpsc::Sender<Bytes>,
    pub events: mpsc::Receiver<Event>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long a closing link may take to write what is queued and its TLS
/// close_notify.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

impl Conn {
    /// Ends the link cleanly: the writer finishes the queued frames and
    /// sends TLS close_notify, so the DataServer sees a closed link, not a
    /// broken one. Gives up (and drops it) after [`CLOSE_WITHIN`].
    pub async fn close(mut self) {
        // Dropping the only sender ends the writer's queue.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.frames, closed));
        let _ = timeout(CLOSE_WITHIN, &mut self.tasks[0]).await;
        // Drop aborts the reader (and a writer that did not finish).
    }
}

// === impl Dialer ===

impl Dialer {
    /// Connects and says hello; the error is one line saying what failed
    /// (and, for the TCP connect, where the endpoint came from).
    pub async fn connect(self: Arc<Self>, target: Target) -> Result<Conn, String> {
        let limit = self.transport.connect_timeout();
        let mut tls = self
            .transport
            .dial(&target.endpoint)
            .await
            .map_err(|e| dial_failed(&target, e))?;
        let endpoint = target.endpoint;
        let mut hello = self.hello.clone();
        if hello.identity_ip.is_empty() {
            hello.identity_ip = tls
                .get_ref()
                .0
                .local_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
        }
        let explain_io = |e: std::io::Error| {
            self.transport
                .explain(&endpoint, &e)
                .unwrap_or_else(|| format!("TLS with DataServer {endpoint} failed: {e}"))
        };
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FramedRead::new(rd, FrameCodec::default());
        let mut writer = FramedWrite::new(wr, FrameCodec::default());
        writer
            .send(Frame::new(MsgType::DataHello, 0, &hello))
            .await
            .map_err(|e| format!("cannot send DataHello to {endpoint}: {e}"))?;
        let ack: DataHelloAck = match first_frame(&mut reader, Instant::now() + limit).await {
            Ok(f) if f.msg_type == MsgType::DataHelloAck => {
                f.decode().map_err(|e| e.to_string())?
            }
            Ok(f) => {
                return Err(format!(
                    "DataServer {endpoint} answered DataHello with frame type {}",
                    f.msg_type.to_u16()
                ));
            }
            Err(FirstFrameError::Timeout) => {
                return Err(format!("no DataHelloAck from {endpoint} within {limit:?}"));
            }
            Err(FirstFrameError::Frame(gse_proto::FrameError::Io(e))) => {
                return Err(explain_io(e));
            }
            Err(FirstFrameError::Frame(e)) => {
                return Err(format!("bad answer from {endpoint}: {e}"));
            }
            Err(FirstFrameError::Closed) => {
                return Err(format!(
                    "DataServer {endpoint} closed the link after DataHello"
                ));
            }
        };
        if !ack.accepted {
            return Err(format!(
                "DataServer {endpoint} refused this agent: {}",
                ack.message
            ));
        }
        let (frames_tx, frames_rx) = mpsc::channel(self.queue.max(1));
        let (events_tx, events_rx) = mpsc::channel(self.queue.max(1) * 2 + 4);
        let tasks = [
            tokio::spawn(write_loop(
                writer.into_inner(),
                frames_rx,
                events_tx.clone(),
            )),
            tokio::spawn(read_loop(reader, events_tx)),
        ];
        Ok(Conn {
            endpoint,
            server_id: ack.server_id,
            max_batch_bytes: ack.max_batch_bytes as usize,
            frames: frames_tx,
            events: events_rx,
            tasks,
        })
    }
}

/// A failed dial in the data link's words: the TCP connect with where the
/// endpoint came from ([`Target::connect_failed`]), the TLS handshake with
/// the DataServer named.
fn dial_failed(target: &Target, e: DialError) -> String {
    let endpoint = &target.endpoint;
    match e {
        DialError::ConnectTimeout { limit, .. } => target.connect_failed(
            ConnectFailure::Unanswered,
            format_args!("no answer within {limit:?}"),
        ),
        DialError::Connect { source, .. } | DialError::Resolve { source, .. } => {
            target.connect_failed(gse_link::net_hint::classify(&source), source)
        }
        DialError::ServerName { name, reason } => {
            format!("server name {name:?} is not valid: {reason}")
        }
        DialError::Tls {
            source, explained, ..
        } => {
            explained.unwrap_or_else(|| format!("TLS with DataServer {endpoint} failed: {source}"))
        }
        DialError::TlsTimeout { limit, .. } => {
            format!("no TLS handshake with DataServer {endpoint} within {limit:?}")
        }
        other => target.connect_failed(ConnectFailure::Other, other),
    }
}

type Reader =
    FramedRead<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>, FrameCodec>;
type Writer = tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>;

/// Writes queued frames, flushing once per burst; when the queue closes
/// ([`Conn::close`]), shuts the TLS stream down (close_notify).
async fn write_loop(mut w: Writer, mut rx: mpsc::Receiver<Bytes>, events: mpsc::Sender<Event>) {
    while let Some(frame) = rx.recv().await {
        let mut result = w.write_all(&frame).await;
        while result.is_ok() {
            match rx.try_recv() {
                Ok(f) => result = w.write_all(&f).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(w.flush().await) {
            let _ = events
                .send(Event::Closed(format!("write failed: {e}")))
                .await;
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Reads acks until the link ends.
async fn read_loop(mut r: Reader, events: mpsc::Sender<Event>) {
    let reason = loop {
        match r.next().await {
            None => break "the DataServer closed the link".to_string(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(f)) if f.msg_type == MsgType::DataAck => match f.decode::<DataAck>() {
                Ok(ack) => {
                    if events.send(Event::Ack(ack)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break format!("bad DataAck: {e}"),
            },
            Some(Ok(f)) => {
                tracing::debug!(msg_type = f.msg_type.to_u16(), "ignoring a data link frame");
            }
        }
    };
    let _ = events.send(Event::Closed(reason)).await;
}

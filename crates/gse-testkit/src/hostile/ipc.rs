//! Local socket attacks (issue 9 items 7, 8): what an unprivileged local
//! user can do to the agent's data socket (`ipc.state.report`) and
//! plugin-message socket (`ipc.state.message`): hold connections, send
//! frames that claim a huge body and never finish, flood well-formed
//! records, or send a record whose sender the agent must name.
//!
//! Each step prints one JSON line (see [`IpcCmd`]); a connection counts as
//! "closed by the agent" when a read on it returns end-of-file or an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// `0xC01`: a collector record whose body is the payload (COMPAT §1.2).
const MSG_TYPE_COMMON: u32 = 0xC01;

#[derive(Debug, Subcommand)]
pub enum IpcCmd {
    /// Opens up to COUNT connections to SOCKET (sending nothing) and holds
    /// them for up to SECONDS, ending early once the agent closed them all.
    /// Prints {"opened", "connect_errors", "closed_by_agent", "open_at_end"}.
    Hold {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        seconds: u64,
    },
    /// Opens COUNT connections, each sending a 0xC01 header that claims a
    /// CLAIM-byte body and then SEND body bytes (less than claimed, so the
    /// frame never completes); holds them for up to SECONDS. Prints
    /// {"opened", "bytes_written", "closed_by_agent", "open_at_end"}.
    PartialFrames {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        claim: u32,
        #[arg(long)]
        send: usize,
        #[arg(long)]
        seconds: u64,
    },
    /// Opens CONNECTIONS connections and sends 0xC01 records of SIZE bytes
    /// on DATA_ID on each, as fast as the agent takes them, for SECONDS (or
    /// until the agent closed them all). Payloads are `flood-<conn>-<n>`
    /// padded with `x`. Prints {"opened", "records_sent"}.
    Flood {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        data_id: u32,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        seconds: u64,
    },
    /// Connects to the plugin-message SOCKET as plugin PLUGIN (keepalive),
    /// sends the server a message with id `hostile-<pid>`, creates READY,
    /// then waits SECONDS for messages from the server. Prints
    /// {"keepalive_answered", "sent", "messages_received"}: a local user
    /// posing as a plugin must receive none.
    PosePlugin {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        ready: PathBuf,
        #[arg(long)]
        seconds: u64,
    },
    /// Sends one 0xC01 record with PAYLOAD on DATA_ID. Prints {"sent",
    /// "pid", "uid", "error"}: who the agent should say sent it.
    SendRecord {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        data_id: u32,
        #[arg(long)]
        payload: String,
    },
}

/// Runs one step on a fresh single-threaded runtime.
pub fn run(cmd: IpcCmd) -> Value {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        match cmd {
            IpcCmd::Hold {
                socket,
                count,
                seconds,
            } => hold(&socket, count, Duration::from_secs(seconds)).await,
            IpcCmd::PartialFrames {
                socket,
                count,
                claim,
                send,
                seconds,
            } => partial_frames(&socket, count, claim, send, Duration::from_secs(seconds)).await,
            IpcCmd::Flood {
                socket,
                data_id,
                connections,
                size,
                seconds,
            } => {
                let deadline = Instant::now() + Duration::from_secs(seconds);
                flood(&socket, data_id, connections, size, deadline).await
            }
            IpcCmd::SendRecord {
                socket,
                data_id,
                payload,
            } => send_record(&socket, data_id, payload.as_bytes()).await,
            IpcCmd::PosePlugin {
                socket,
                plugin,
                ready,
                seconds,
            } => pose_plugin(&socket, &plugin, &ready, Duration::from_secs(seconds)).await,
        }
    })
}

/// An unprivileged user may raise its soft descriptor limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The 24-byte upstream header of a 0xC01 frame.
pub fn common_header(data_id: u32, body_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [MSG_TYPE_COMMON, data_id, 1_700_000_000, body_len, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// Tries `count` connects (no retries); returns the ones that succeeded and
/// how many failed.
async fn open_many(socket: &Path, count: usize) -> (Vec<UnixStream>, usize) {
    let mut conns = Vec::with_capacity(count);
    let mut errors = 0;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(socket)).await {
            Ok(Ok(c)) => conns.push(c),
            _ => errors += 1,
        }
    }
    (conns, errors)
}

/// Waits until each connection is closed by the agent or `deadline`;
/// returns how many were closed.
async fn closed_by_agent(conns: Vec<UnixStream>, deadline: Instant) -> usize {
    let waits = conns.into_iter().map(|mut c| async move {
        let mut byte = [0u8; 1];
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut byte)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // The agent answered something: keep waiting for the close.
                Ok(Ok(_)) => continue,
            }
        }
    });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

async fn hold(socket: &Path, count: usize, seconds: Duration) -> Value {
    let deadline = Instant::now() + seconds;
    let (conns, connect_errors) = open_many(socket, count).await;
    let opened = conns.len();
    eprintln!("opened {opened} connections ({connect_errors} connect errors)");
    let closed = closed_by_agent(conns, deadline).await;
    json!({
        "opened": opened,
        "connect_errors": connect_errors,
        "closed_by_agent": closed,
        "open_at_end": opened - closed,
    })
}

async fn partial_frames(
    socket: &Path,
    count: usize,
    claim: u32,
    send: usize,
    seconds: Duration,
) -> Value {
    let deadline = Instant::now() + seconds;
    let (conns, connect_errors) = open_many(socket, count).await;
    let opened = conns.len();
    let body = vec![b'x'; send.min(claim as usize)];
    // All at once: the agent may stop reading some, and a blocked write
    // must not keep the others from being sent.
    let writes = conns.into_iter().map(|mut c| {
        let body = &body;
        async move {
            let mut written = 0usize;
            let header = common_header(1, claim);
            if tokio::time::timeout_at(deadline, c.write_all(&header))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                for piece in body.chunks(64 * 1024) {
                    match tokio::time::timeout_at(deadline, c.write_all(piece)).await {
                        Ok(Ok(())) => written += piece.len(),
                        _ => break,
                    }
                }
            }
            (c, written)
        }
    });
    let done = futures::future::join_all(writes).await;
    let bytes_written: usize = done.iter().map(|(_, n)| n).sum();
    eprintln!("{opened} connections wrote {bytes_written} bytes");
    let closed = closed_by_agent(done.into_iter().map(|(c, _)| c).collect(), deadline).await;
    json!({
        "opened": opened,
        "connect_errors": connect_errors,
        "bytes_written": bytes_written,
        "closed_by_agent": closed,
        "open_at_end": opened - closed,
    })
}

/// Records per write of a flooding connection.
const FLOOD_RECORDS_PER_WRITE: usize = 16;

async fn flood(
    socket: &Path,
    data_id: u32,
    connections: usize,
    size: usize,
    deadline: Instant,
) -> Value {
    let (conns, connect_errors) = open_many(socket, connections).await;
    let opened = conns.len();
    let sends = conns.into_iter().enumerate().map(|(i, mut c)| async move {
        let mut sent = 0usize;
        loop {
            let mut burst = Vec::with_capacity(FLOOD_RECORDS_PER_WRITE * (24 + size));
            for k in 0..FLOOD_RECORDS_PER_WRITE {
                let mut payload = format!("flood-{i}-{}", sent + k).into_bytes();
                payload.resize(size.max(payload.len()), b'x');
                burst.extend_from_slice(&common_header(data_id, payload.len() as u32));
                burst.extend_from_slice(&payload);
            }
            match tokio::time::timeout_at(deadline, c.write_all(&burst)).await {
                Ok(Ok(())) => sent += FLOOD_RECORDS_PER_WRITE,
                _ => return sent,
            }
        }
    });
    let records_sent: usize = futures::future::join_all(sends).await.into_iter().sum();
    json!({
        "opened": opened,
        "connect_errors": connect_errors,
        "records_sent": records_sent,
    })
}

async fn send_record(socket: &Path, data_id: u32, payload: &[u8]) -> Value {
    let me = json!({
        "pid": std::process::id(),
        "uid": nix::unistd::getuid().as_raw(),
    });
    let mut frame = common_header(data_id, payload.len() as u32);
    frame.extend_from_slice(payload);
    let sent = async {
        let mut c = UnixStream::connect(socket).await?;
        c.write_all(&frame).await?;
        c.shutdown().await?;
        // Stay connected until the agent read it and closed: the pid the
        // agent saw must still be this process when the test looks.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.map(|_| ())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), sent).await;
    let mut out = me;
    match result {
        Ok(Ok(())) => out["sent"] = json!(true),
        Ok(Err(e)) => {
            out["sent"] = json!(false);
            out["error"] = json!(e.to_string());
        }
        Err(_) => {
            out["sent"] = json!(false);
            out["error"] = json!("timed out");
        }
    }
    out
}

/// See [`IpcCmd::PosePlugin`].
async fn pose_plugin(socket: &Path, plugin: &str, ready: &Path, wait: Duration) -> Value {
    use crate::plugin_client::PluginClient;
    let (mut client, _) = match PluginClient::connect(socket, plugin).await {
        Ok(c) => c,
        Err(e) => return json!({"keepalive_answered": false, "error": e.to_string()}),
    };
    let id = format!("hostile-{}", std::process::id());
    let sent = client.send_message(plugin, &id, b"{}").await.is_ok();
    // The keepalive after it is answered only once the message was read.
    let answered = client.keepalive(plugin).await.is_ok();
    let _ = std::fs::write(ready, b"ready");
    let deadline = Instant::now() + wait;
    let mut received = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.next_message(left).await {
            Ok(Some(_)) => received += 1,
            Ok(None) | Err(_) => break,
        }
    }
    json!({"keepalive_answered": answered, "sent": sent, "message_id": id, "messages_received": received})
}

//! Holding many TCP connections to a server, as an unauthenticated network
//! client would to take its descriptors: silent, a TLS ClientHello begun
//! and never finished, half-sent HTTP headers, trickled headers, or one
//! request and then idle; from one source address or spread over several.
//!
//! The "opened" summary is printed when what the test waits for has
//! happened (so many connections answered, so many closed by the server),
//! never after a fixed pause: on a loaded machine the server may take
//! seconds to get to them. A generous deadline bounds the wait; when it
//! passes, the summary shows how far the server got, and the test's
//! assertion says what was missing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{connect, parse_answer, raise_open_files_limit, runtime};

/// What each held connection sends after connecting.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Send {
    /// Nothing at all. (On a loaded host a silent connection may never
    /// reach the server: its final ACK lost with SYN cookies in use, it
    /// looks open here only. Prefer `tls-hello-start` against TLS.)
    Nothing,
    /// The first bytes of a TLS ClientHello (a record header announcing
    /// 512 bytes, and the message type), never the rest.
    TlsHelloStart,
    /// A request line and part of the headers, never finished.
    HalfHeader,
    /// One complete keep-alive `GET /healthz`, then silence.
    IdleAfterRequest,
}

/// How `hold` opens and watches its connections.
pub struct HoldSpec {
    pub addr: SocketAddr,
    /// Source addresses, taken in turn; empty = the system's choice.
    pub binds: Vec<IpAddr>,
    pub count: usize,
    pub send: Send,
    /// After a half header, one more header byte every this many ms.
    pub trickle_ms: Option<u64>,
    /// "opened" waits until at least this many connections got a complete
    /// answer or were closed by the server.
    pub until_answered: usize,
    /// "opened" waits until at least this many connections were closed by
    /// the server.
    pub until_closed: usize,
    /// Longest wait for those counts, ms; "opened" is printed then anyway.
    pub max_wait_ms: u64,
    /// How long connections are watched for the server closing them.
    pub watch_secs: u64,
}

/// What happened on one connection.
#[derive(Default, Clone)]
struct Seen {
    answer: Vec<u8>,
    closed_ms: Option<u64>,
}

/// How often the counts are looked at while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Opens `count` connections, prints a JSON line (`"phase": "opened"`)
/// once the counts the spec waits for are reached (or `max_wait_ms`
/// passed), then watches them for up to `watch_secs` and returns the final
/// summary (`"phase": "done"`).
pub fn hold(spec: HoldSpec) -> Value {
    raise_open_files_limit();
    runtime().block_on(async move {
        let started = Instant::now();
        let (conns, connect_errors) = open_all(&spec, started).await;
        let deadline = Instant::now() + Duration::from_millis(spec.max_wait_ms);
        while Instant::now() < deadline && !reached(&spec, &conns) {
            tokio::time::sleep(POLL).await;
        }
        let opened = summary("opened", &conns, &connect_errors, started);
        println!("{opened}");
        let _ = std::io::stdout().flush();
        let deadline = started + Duration::from_secs(spec.watch_secs);
        while Instant::now() < deadline
            && conns.iter().any(|c| c.lock().unwrap().closed_ms.is_none())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        summary("done", &conns, &connect_errors, started)
    })
}

/// Opens the connections, all at once (a server that stops accepting makes
/// each connect wait for its timeout), each driven by its own task.
async fn open_all(
    spec: &HoldSpec,
    started: Instant,
) -> (Vec<Arc<Mutex<Seen>>>, BTreeMap<String, u64>) {
    let connects: Vec<_> = (0..spec.count)
        .map(|i| {
            let bind = (!spec.binds.is_empty()).then(|| spec.binds[i % spec.binds.len()]);
            tokio::spawn(connect(spec.addr, bind))
        })
        .collect();
    let mut conns = Vec::new();
    let mut connect_errors = BTreeMap::<String, u64>::new();
    for c in connects {
        match c.await.expect("connect task") {
            Ok(tcp) => {
                let seen = Arc::new(Mutex::new(Seen::default()));
                let (send, trickle) = (spec.send, spec.trickle_ms);
                tokio::spawn(drive(tcp, send, trickle, seen.clone(), started));
                conns.push(seen);
            }
            Err(e) => *connect_errors.entry(e.to_string()).or_default() += 1,
        }
    }
    (conns, connect_errors)
}

/// Whether the counts `spec` waits for are reached.
fn reached(spec: &HoldSpec, conns: &[Arc<Mutex<Seen>>]) -> bool {
    let (mut answered, mut closed) = (0, 0);
    for c in conns {
        let s = c.lock().unwrap();
        if s.closed_ms.is_some() {
            closed += 1;
            answered += 1;
        } else if answer_complete(&s.answer) {
            answered += 1;
        }
    }
    answered >= spec.until_answered && closed >= spec.until_closed
}

/// Whether `raw` holds a whole HTTP answer: the head and as many body
/// bytes as its Content-Length says.
fn answer_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    raw.len() >= end + 4 + length
}

/// Sends what `send` says, then reads until the server closes.
async fn drive(
    tcp: TcpStream,
    send: Send,
    trickle_ms: Option<u64>,
    seen: Arc<Mutex<Seen>>,
    started: Instant,
) {
    let (mut rd, mut wr) = tcp.into_split();
    let first: &[u8] = match send {
        Send::Nothing => b"",
        Send::TlsHelloStart => &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        Send::HalfHeader => b"POST /api/v2/cluster/list_agents HTTP/1.1\r\nHost: gse\r\nX-Pad: ",
        Send::IdleAfterRequest => b"GET /healthz HTTP/1.1\r\nHost: gse\r\n\r\n",
    };
    let writer = tokio::spawn(async move {
        if wr.write_all(first).await.is_err() {
            return;
        }
        let Some(ms) = trickle_ms else {
            // Keep the write half open: dropping it would send FIN.
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut s = seen.lock().unwrap();
                if s.answer.len() < 64 * 1024 {
                    s.answer.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    seen.lock().unwrap().closed_ms = Some(started.elapsed().as_millis() as u64);
    writer.abort();
}

fn summary(
    phase: &str,
    conns: &[Arc<Mutex<Seen>>],
    connect_errors: &BTreeMap<String, u64>,
    started: Instant,
) -> Value {
    let mut statuses = BTreeMap::<String, u64>::new();
    let mut codes = BTreeMap::<String, u64>::new();
    let mut messages = Vec::<String>::new();
    let (mut closed, mut closed_silent) = (0u64, 0u64);
    let mut closed_ms = Vec::new();
    for c in conns {
        let s = c.lock().unwrap().clone();
        let answer = parse_answer(&s.answer);
        if let Some(status) = answer.status {
            *statuses.entry(status.to_string()).or_default() += 1;
        }
        if let Some(code) = answer.json.get("code").and_then(Value::as_i64) {
            *codes.entry(code.to_string()).or_default() += 1;
        }
        if let Some(m) = answer.json.get("message").and_then(Value::as_str)
            && messages.len() < 5
            && !messages.iter().any(|x| x == m)
        {
            messages.push(m.to_string());
        }
        if let Some(ms) = s.closed_ms {
            closed += 1;
            closed_ms.push(ms);
            if s.answer.is_empty() {
                closed_silent += 1;
            }
        }
    }
    json!({
        "phase": phase,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "opened": conns.len(),
        "connect_errors": connect_errors,
        "statuses": statuses,
        "codes": codes,
        "messages": messages,
        "closed": closed,
        "closed_without_answer": closed_silent,
        "open": conns.len() as u64 - closed,
        "closed_ms_min": closed_ms.iter().min(),
        "closed_ms_max": closed_ms.iter().max(),
    })
}

/// A `gse-hostile` attack running in the background (e.g. holding
/// connections while the test checks something else); killed on drop.
pub struct Background {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Background {
    /// Starts `cmd` with its stdout piped.
    pub fn spawn(mut cmd: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gse-hostile");
        let stdout = child.stdout.take().expect("piped stdout");
        Background {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next JSON line it prints (blocking; call from a blocking task).
    pub fn next_json(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .unwrap_or_else(|| panic!("gse-hostile exited: {:?}", self.child.try_wait()))
            .expect("read gse-hostile's stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("gse-hostile printed {line:?}: {e}"))
    }

    /// Kills it now (its connections close).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

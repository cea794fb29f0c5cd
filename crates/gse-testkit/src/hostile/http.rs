//! Network attacks on the HTTP API by an unauthenticated client: holding
//! connections (half-sent, trickled or idle), sending big bodies without
//! credentials, and single hand-made requests (long URIs, huge headers) from
//! a chosen source address.
//!
//! Everything speaks raw HTTP/1.1 over TCP, so the server's own answers
//! (status line, envelope) are seen exactly as sent.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What each held connection sends after connecting.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Send {
    /// Nothing at all.
    Nothing,
    /// A request line and part of the headers, never finished.
    HalfHeader,
    /// One complete keep-alive `GET /healthz`, then silence.
    IdleAfterRequest,
}

/// How `hold` opens and watches its connections.
pub struct HoldSpec {
    pub addr: SocketAddr,
    pub bind: Option<IpAddr>,
    pub count: usize,
    pub send: Send,
    /// After a half header, one more header byte every this many ms.
    pub trickle_ms: Option<u64>,
    /// Time given to the server to answer before the "opened" line.
    pub settle_ms: u64,
    /// How long connections are watched for the server closing them.
    pub watch_secs: u64,
}

/// What happened on one connection.
#[derive(Default, Clone)]
struct Seen {
    answer: Vec<u8>,
    closed_ms: Option<u64>,
}

/// Opens `count` connections, prints a JSON line (`"phase": "opened"`)
/// once they are open and the server had `settle_ms` to answer, then
/// watches them for up to `watch_secs` and returns the final summary.
pub fn hold(spec: HoldSpec) -> Value {
    raise_open_files_limit();
    runtime().block_on(async move {
        let started = Instant::now();
        let mut conns = Vec::new();
        let mut connect_errors = BTreeMap::<String, u64>::new();
        for _ in 0..spec.count {
            match connect(spec.addr, spec.bind).await {
                Ok(tcp) => {
                    let seen = Arc::new(Mutex::new(Seen::default()));
                    tokio::spawn(drive(
                        tcp,
                        spec.send,
                        spec.trickle_ms,
                        seen.clone(),
                        started,
                    ));
                    conns.push(seen);
                }
                Err(e) => *connect_errors.entry(e.to_string()).or_default() += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(spec.settle_ms)).await;
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

async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
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

/// A raw HTTP answer: the status and the body parsed as JSON (`Null` when
/// it is not JSON).
struct Answer {
    status: Option<u16>,
    json: Value,
    text: String,
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Answer { status, json, text }
}

/// One hand-made request.
pub struct RequestSpec {
    pub addr: SocketAddr,
    pub bind: Option<IpAddr>,
    pub method: String,
    pub path: String,
    /// Characters appended to the path (a long URI).
    pub path_pad: usize,
    /// Bytes of one extra header's value (huge headers).
    pub header_pad: usize,
    /// Extra small headers (many headers).
    pub header_count: usize,
    /// `Name: value` headers to send as given.
    pub headers: Vec<String>,
    pub body: String,
}

/// Sends one request with `Connection: close` and reads the whole answer:
/// `{"status", "json", "text"}` or `{"error"}`.
pub fn request(spec: RequestSpec) -> Value {
    runtime().block_on(async move {
        let mut head = format!(
            "{} {}{} HTTP/1.1\r\nHost: gse\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            spec.method,
            spec.path,
            "a".repeat(spec.path_pad),
            spec.body.len()
        );
        if spec.header_pad > 0 {
            head.push_str(&format!("X-Pad: {}\r\n", "b".repeat(spec.header_pad)));
        }
        for i in 0..spec.header_count {
            head.push_str(&format!("X-Many-{i}: {i}\r\n"));
        }
        for h in &spec.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&spec.body);
        let result = async {
            let mut tcp = connect(spec.addr, spec.bind).await?;
            // The server may answer and close before it read everything.
            let _ = tcp.write_all(head.as_bytes()).await;
            let mut raw = Vec::new();
            let _ = tcp.read_to_end(&mut raw).await;
            Ok::<_, std::io::Error>(raw)
        };
        match tokio::time::timeout(Duration::from_secs(60), result).await {
            Ok(Ok(raw)) => {
                let a = parse_answer(&raw);
                let text: String = a.text.chars().take(300).collect();
                json!({"status": a.status, "json": a.json, "text": text})
            }
            Ok(Err(e)) => json!({"error": e.to_string()}),
            Err(_) => json!({"error": "no answer within 60 s"}),
        }
    })
}

/// Sends `count` requests at once, each declaring and streaming a body of
/// `bytes` bytes with no credentials anywhere, and reads each answer while
/// still sending. Returns how each was answered.
pub fn big_bodies(addr: SocketAddr, path: &str, count: usize, bytes: usize) -> Value {
    raise_open_files_limit();
    runtime().block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..count {
            let path = path.to_string();
            tasks.push(tokio::spawn(big_body(addr, path, bytes)));
        }
        let mut answers = BTreeMap::<String, u64>::new();
        let mut sent_total = 0u64;
        for t in tasks {
            let (key, sent) = t.await.unwrap_or_else(|e| (format!("panic: {e}"), 0));
            *answers.entry(key).or_default() += 1;
            sent_total += sent;
        }
        json!({"answers": answers, "bytes_sent_total": sent_total})
    })
}

/// One big unauthenticated body; `("<status> <code>", bytes sent)`.
async fn big_body(addr: SocketAddr, path: String, bytes: usize) -> (String, u64) {
    let tcp = match connect(addr, None).await {
        Ok(t) => t,
        Err(e) => return (format!("connect failed: {e}"), 0),
    };
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gse\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\n\r\n"
        );
        if wr.write_all(head.as_bytes()).await.is_err() {
            return 0u64;
        }
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0usize;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        sent as u64
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), rd.read_to_end(&mut raw)).await;
    let sent = if read.is_ok() {
        writer.await.unwrap_or(0)
    } else {
        writer.abort();
        0
    };
    let a = parse_answer(&raw);
    let key = match (a.status, a.json.get("code").and_then(Value::as_i64)) {
        (Some(s), Some(c)) => format!("{s} {c}"),
        (Some(s), None) => format!("{s} not-json"),
        _ if read.is_err() => "no answer within 120 s".to_string(),
        _ => "closed without answer".to_string(),
    };
    (key, sent)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Soft open-files limit up to the hard one: an attack holds many sockets.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
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

//! Network attacks on the HTTP API by an unauthenticated client: sending
//! big bodies without credentials, and single hand-made requests (long URIs,
//! huge headers) from a chosen source address. Holding many connections is
//! [`super::hold`]'s.
//!
//! Everything speaks raw HTTP/1.1 over TCP, so the server's own answers
//! (status line, envelope) are seen exactly as sent.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A raw HTTP answer: the status and the body parsed as JSON (`Null` when
/// it is not JSON).
pub(super) struct Answer {
    pub status: Option<u16>,
    pub json: Value,
    pub text: String,
}

pub(super) fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Answer { status, json, text }
}

/// A TCP connection to `addr`, from `bind` when given.
pub(super) async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
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

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Soft open-files limit up to the hard one: an attack holds many sockets.
pub(super) fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

//! A hosted plugin's side of the plugin-message socket (COMPAT §1.3),
//! written from the protocol description as the GSE SDK's agent-message
//! client speaks it: 28-byte big-endian headers (magic `0xDEADBEEF`,
//! version 6), a keepalive (0x9006) answered by 0x9007, messages to the
//! server (0x900a: info JSON then content, their lengths in the reserved
//! words) and from it (0x9008, the same layout). The tests and
//! `gse-hostile` use it; it shares no code with the agent.

use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MAGIC: u32 = 0xDEAD_BEEF;
const HEADER: usize = 28;
const KEEPALIVE_REQ: u16 = 0x9006;
const KEEPALIVE_RESP: u16 = 0x9007;
const DISPATCH: u16 = 0x9008;
const RESPOND: u16 = 0x900a;
/// The SDK's own limit on a message.
const MAX_FRAME: usize = 10 << 20;

/// One frame as read.
struct Frame {
    proto_type: u16,
    reserved0: u32,
    body: Vec<u8>,
}

/// A message the server sent the plugin (0x9008).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub message_id: String,
    pub content: Vec<u8>,
}

/// A connected plugin; see the module doc.
pub struct PluginClient {
    stream: UnixStream,
    seq: u64,
}

impl PluginClient {
    /// Connects to `socket` as plugin `name` and says its first keepalive;
    /// returns the agent's answer (`{agent_id, version, cloud_id, ...}`).
    pub async fn connect(socket: &Path, name: &str) -> io::Result<(PluginClient, Value)> {
        let stream = UnixStream::connect(socket).await?;
        let mut client = PluginClient {
            stream,
            seq: 1_700_000_000,
        };
        let answer = client.keepalive(name).await?;
        Ok((client, answer))
    }

    /// A keepalive as `name`; the agent's answer.
    pub async fn keepalive(&mut self, name: &str) -> io::Result<Value> {
        let body = json!({
            "plugin_name": name, "version": "1.0.0", "pid": std::process::id(),
            "status_code": 0, "status": "ok", "remark": "",
        });
        self.write(KEEPALIVE_REQ, &serde_json::to_vec(&body)?, &[])
            .await?;
        loop {
            let f = self.read(Duration::from_secs(10)).await?;
            if f.proto_type == KEEPALIVE_RESP {
                return serde_json::from_slice(&f.body).map_err(io::Error::other);
            }
        }
    }

    /// Sends the server a message as plugin `name` (0x900a).
    pub async fn send_message(
        &mut self,
        name: &str,
        message_id: &str,
        content: &[u8],
    ) -> io::Result<()> {
        let info = json!({
            "name": name, "transmit_type": 0, "topic": "",
            "message_id": message_id, "session_id": "",
        });
        self.write(RESPOND, &serde_json::to_vec(&info)?, content)
            .await
    }

    /// The next message from the server within `within`; `None` if none
    /// came (keepalive answers are skipped). A 0x9008 whose lengths do not
    /// add up is an error, as the SDK drops it.
    pub async fn next_message(&mut self, within: Duration) -> io::Result<Option<Dispatched>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = match self.read(left).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
                Err(e) => return Err(e),
            };
            if f.proto_type != DISPATCH {
                continue;
            }
            let info_len = f.reserved0 as usize;
            if info_len == 0 || info_len > f.body.len() {
                return Err(io::Error::other("a 0x9008 whose info length is wrong"));
            }
            let info: Value =
                serde_json::from_slice(&f.body[..info_len]).map_err(io::Error::other)?;
            return Ok(Some(Dispatched {
                message_id: info["message_id"].as_str().unwrap_or_default().to_string(),
                content: f.body[info_len..].to_vec(),
            }));
        }
    }

    async fn write(&mut self, proto_type: u16, info: &[u8], content: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let (r0, r1) = match proto_type {
            RESPOND => (info.len() as u32, content.len() as u32),
            _ => (0, 0),
        };
        let len = HEADER + info.len() + content.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&proto_type.to_be_bytes());
        out.extend_from_slice(&6u16.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&r0.to_be_bytes());
        out.extend_from_slice(&r1.to_be_bytes());
        out.extend_from_slice(info);
        out.extend_from_slice(content);
        self.stream.write_all(&out).await
    }

    async fn read(&mut self, within: Duration) -> io::Result<Frame> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "no frame in time");
        let mut head = [0u8; HEADER];
        tokio::time::timeout(within, self.stream.read_exact(&mut head))
            .await
            .map_err(|_| timed_out())??;
        let word = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().unwrap());
        if word(0) != MAGIC {
            return Err(io::Error::other("bad magic from the agent"));
        }
        let len = word(16) as usize;
        if !(HEADER..=MAX_FRAME).contains(&len) {
            return Err(io::Error::other(format!(
                "frame length {len} out of bounds"
            )));
        }
        let mut body = vec![0u8; len - HEADER];
        tokio::time::timeout(
            within.max(Duration::from_secs(5)),
            self.stream.read_exact(&mut body),
        )
        .await
        .map_err(|_| timed_out())??;
        let reserved1 = word(24) as usize;
        let reserved0 = word(20);
        let proto_type = u16::from_be_bytes([head[4], head[5]]);
        if proto_type == DISPATCH && reserved0 as usize + reserved1 != body.len() {
            return Err(io::Error::other(
                "a 0x9008 whose part lengths do not add up to its body",
            ));
        }
        Ok(Frame {
            proto_type,
            reserved0,
            body,
        })
    }
}

//! `gse-agent send`: the local send interface (D1) for scripts. Each input
//! line becomes one 0xC01 record (COMPAT §1.2: 24-byte big-endian header
//! `{type, dataid, utctime, bodylen, 0, 0}`, then the line) on the agent's
//! local data socket.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::ipc_codec::{HEADER_LEN, MSG_TYPE_COMMON};

/// Longest line sent: the largest record the agent's socket takes (and
/// the data path carries); longer ones are refused here.
pub const MAX_LINE: usize = gse_proto::MAX_RECORD_BYTES;

/// Why `send` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "no agent data socket at {path}: start gse-agent (or pass --socket with the path in its [data] ipc)"
    )]
    Missing { path: PathBuf },
    #[error("cannot connect to the agent data socket {path}: {source} (is gse-agent running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing to the agent data socket {path} failed after {sent} records: {source}")]
    Write {
        path: PathBuf,
        sent: u64,
        source: std::io::Error,
    },
    #[error("reading the input failed after {sent} records: {source}")]
    Read { sent: u64, source: std::io::Error },
    #[error(
        "line {line} is {len} bytes, over the {MAX_LINE}-byte limit; nothing after it was sent"
    )]
    TooLong { line: u64, len: usize },
    #[error("--data-id 0 is not a channel; give the data id the route was made for")]
    NoDataId,
}

/// Encodes one 0xC01 frame.
pub fn encode_common(data_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    out.reserve(HEADER_LEN + payload.len());
    for v in [MSG_TYPE_COMMON, data_id, now, payload.len() as u32, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Sends every line of `input` (without its line ending; empty lines are
/// skipped) as a record of `data_id`; returns how many were sent.
pub fn send_lines(socket: &Path, data_id: u32, input: impl BufRead) -> Result<u64, SendError> {
    if data_id == 0 {
        return Err(SendError::NoDataId);
    }
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SendError::Missing {
                path: socket.into(),
            });
        }
        Err(source) => {
            return Err(SendError::Connect {
                path: socket.into(),
                source,
            });
        }
    };
    let mut sent = 0u64;
    let mut buf = Vec::new();
    let mut write = |buf: &mut Vec<u8>, sent: u64| {
        stream.write_all(buf).map_err(|source| SendError::Write {
            path: socket.into(),
            sent,
            source,
        })?;
        buf.clear();
        Ok::<_, SendError>(())
    };
    for (index, line) in input.split(b'\n').enumerate() {
        let mut line = line.map_err(|source| SendError::Read { sent, source })?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            write(&mut buf, sent)?;
            return Err(SendError::TooLong {
                line: index as u64 + 1,
                len: line.len(),
            });
        }
        encode_common(data_id, &line, &mut buf);
        sent += 1;
        if buf.len() >= 64 << 10 {
            write(&mut buf, sent)?;
        }
    }
    write(&mut buf, sent)?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::data::ipc_codec::{Frame, IpcCodec};

    #[test]
    fn frames_decode_as_common_records() {
        let mut out = Vec::new();
        encode_common(1001, b"{\"k\":1}", &mut out);
        let mut buf = BytesMut::from(&out[..]);
        let Some(Frame::Record(r)) = IpcCodec::new(1024).decode(&mut buf).unwrap() else {
            panic!("not a record");
        };
        assert_eq!((r.data_id, &r.payload[..]), (1001, &b"{\"k\":1}"[..]));
    }

    #[test]
    fn missing_socket_names_the_path() {
        let err = send_lines(Path::new("/nonexistent/ipc"), 1, &b"a\n"[..]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/ipc") && text.contains("start gse-agent"),
            "{text}"
        );
        assert!(matches!(
            send_lines(Path::new("/x"), 0, &b""[..]),
            Err(SendError::NoDataId)
        ));
    }
}

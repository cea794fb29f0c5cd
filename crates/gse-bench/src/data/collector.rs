//! The collector side of the data bench: clients of the agent's local data
//! socket that send numbered records as fast as the socket takes them, in
//! the libgse "common" frame layout of COMPAT.md §1.2 (24-byte big-endian
//! header {0xC01, dataid, utctime, bodylen, 0, 0} + payload).
//!
//! Every payload is `<12-digit index><filler>`, exactly `record_size`
//! bytes of ASCII, so the sink's copy can be checked for every index
//! without a JSON parser and no escaping changes its length.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Message type of a plain data frame (`GSE_TYPE_COMMON`).
const MSG_COMMON: u32 = 0xC01;
/// Digits of the index at the start of every payload.
pub const INDEX_DIGITS: usize = 12;
/// Frames written per syscall.
const FRAMES_PER_WRITE: usize = 64;

/// What one run of collectors sends.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub data_id: u32,
    pub records: u64,
    pub record_size: usize,
    pub connections: u32,
}

impl Load {
    pub fn check(&self) -> Result<()> {
        if self.record_size < INDEX_DIGITS + 1 {
            bail!(
                "--record-size {} is too small: give at least {}",
                self.record_size,
                INDEX_DIGITS + 1
            );
        }
        if self.connections == 0 || self.records == 0 {
            bail!("--connections and --records must be at least 1");
        }
        Ok(())
    }

    /// Bytes of payload the run sends.
    pub fn payload_bytes(&self) -> u64 {
        self.records * self.record_size as u64
    }
}

/// Appends the frame of record `index` to `buf`.
fn put_frame(buf: &mut BytesMut, load: &Load, index: u64) {
    buf.put_u32(MSG_COMMON);
    buf.put_u32(load.data_id);
    buf.put_u32(0);
    buf.put_u32(load.record_size as u32);
    buf.put_u32(0);
    buf.put_u32(0);
    buf.put_slice(format!("{index:0width$}", width = INDEX_DIGITS).as_bytes());
    buf.put_bytes(b'x', load.record_size - INDEX_DIGITS);
}

/// Sends records `0..load.records` over `load.connections` connections to
/// the socket at `path` (connection c sends the indexes congruent to c);
/// returns when every byte is written.
pub async fn send_all(path: &Path, load: Load) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..load.connections {
        let path = path.to_path_buf();
        tasks.spawn(async move {
            let mut stream = UnixStream::connect(&path)
                .await
                .with_context(|| format!("cannot connect to the data socket {}", path.display()))?;
            let mut buf = BytesMut::with_capacity(FRAMES_PER_WRITE * (24 + load.record_size));
            let mut index = u64::from(c);
            while index < load.records {
                buf.clear();
                for _ in 0..FRAMES_PER_WRITE {
                    if index >= load.records {
                        break;
                    }
                    put_frame(&mut buf, &load, index);
                    index += u64::from(load.connections);
                }
                stream
                    .write_all(&buf)
                    .await
                    .with_context(|| format!("writing to the data socket {}", path.display()))?;
            }
            stream.shutdown().await.ok();
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a collector task panicked")??;
    }
    Ok(())
}

/// The index a payload starts with, if it is one of ours.
pub fn index_of(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(..INDEX_DIGITS)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_common_header_and_an_exact_payload() {
        let load = Load {
            data_id: 7,
            records: 1,
            record_size: 100,
            connections: 1,
        };
        let mut buf = BytesMut::new();
        put_frame(&mut buf, &load, 42);
        assert_eq!(buf.len(), 124);
        assert_eq!(&buf[0..4], &0xC01u32.to_be_bytes());
        assert_eq!(&buf[4..8], &7u32.to_be_bytes());
        assert_eq!(&buf[12..16], &100u32.to_be_bytes());
        assert_eq!(index_of(&buf[24..]), Some(42));
    }
}

//! Redis' own figures: `INFO stats` and `INFO commandstats` over a plain
//! TCP connection (RESP), for the commands a cluster's nodes send it
//! (`gse-bench scale`). Commands a Lua script runs (`redis.call`) are
//! counted as well as the `EVAL` that ran them.
//!
//! Not through the `redis` client: gse-bench does not depend on it, and
//! one command with one bulk answer is all it needs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Largest INFO answer accepted (`INFO stats` is about 2 KiB).
const MAX_ANSWER: usize = 1 << 20;

/// The figures of `INFO stats` the bench reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedisStats {
    /// Commands served since the server started.
    pub total_commands_processed: u64,
    /// Redis' own estimate of commands per second (a recent average).
    pub instantaneous_ops_per_sec: f64,
}

/// `INFO stats` of the Redis at `addr`.
pub async fn stats(addr: SocketAddr) -> Result<RedisStats> {
    let text = tokio::task::spawn_blocking(move || info(addr, "stats"))
        .await
        .context("the INFO call panicked")??;
    RedisStats::parse(&text).with_context(|| format!("INFO stats of redis-server on {addr}"))
}

/// Calls so far of every command Redis served (`INFO commandstats`), by
/// lower-case name (`eval`, `hset`, ...).
pub async fn command_calls(addr: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let text = tokio::task::spawn_blocking(move || info(addr, "commandstats"))
        .await
        .context("the INFO call panicked")??;
    Ok(parse_commandstats(&text))
}

/// `cmdstat_<name>:calls=<n>,usec=...` lines; others are skipped.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, fields) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

impl RedisStats {
    /// Reads the two figures out of an INFO answer.
    fn parse(text: &str) -> Result<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .with_context(|| format!("no {name} line"))
        };
        Ok(RedisStats {
            total_commands_processed: field("total_commands_processed")?
                .parse()
                .context("total_commands_processed is not a number")?,
            instantaneous_ops_per_sec: field("instantaneous_ops_per_sec")?
                .parse()
                .context("instantaneous_ops_per_sec is not a number")?,
        })
    }
}

/// `INFO <section>`: the bulk string Redis answers.
fn info(addr: SocketAddr, section: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to redis-server on {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("INFO {section}\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = bulk(&answer)? {
            return Ok(String::from_utf8_lossy(body).into_owned());
        }
        let n = s.read(&mut buf).context("reading the INFO answer")?;
        if n == 0 {
            bail!("redis-server on {addr} closed the connection mid-answer");
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > MAX_ANSWER {
            bail!("the INFO answer is over {MAX_ANSWER} bytes");
        }
    }
}

/// The body of a complete RESP bulk string (`$<len>\r\n<body>\r\n`);
/// `None` until all of it arrived.
fn bulk(answer: &[u8]) -> Result<Option<&[u8]>> {
    let Some(eol) = answer.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&answer[..eol]);
    let Some(len) = head.strip_prefix('$') else {
        bail!("redis-server answered {head:?}");
    };
    let len: usize = len
        .parse()
        .with_context(|| format!("bad bulk length {len:?}"))?;
    let body = eol + 2;
    Ok((answer.len() >= body + len).then(|| &answer[body..body + len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bulk_answer_once_complete() {
        assert_eq!(bulk(b"$5\r\nhel").unwrap(), None);
        assert_eq!(bulk(b"$5\r\nhello\r\n").unwrap(), Some(&b"hello"[..]));
        assert_eq!(bulk(b"$5").unwrap(), None);
        let err = bulk(b"-NOAUTH Authentication required.\r\n").unwrap_err();
        assert!(err.to_string().contains("NOAUTH"), "{err}");
    }

    #[test]
    fn parses_calls_per_command() {
        let text = "# Commandstats\r\n\
                    cmdstat_eval:calls=40,usec=900,usec_per_call=22.5,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_hset:calls=16000,usec=1,usec_per_call=0.1\r\n\
                    cmdstat_info:calls=x\r\n";
        let calls = parse_commandstats(text);
        assert_eq!(calls.get("eval"), Some(&40));
        assert_eq!(calls.get("hset"), Some(&16_000));
        assert_eq!(calls.len(), 2, "a line without a number is skipped");
    }

    #[test]
    fn parses_the_stats_section() {
        let text = "# Stats\r\ntotal_connections_received:12\r\n\
                    total_commands_processed:98765\r\ninstantaneous_ops_per_sec:412\r\n";
        let stats = RedisStats::parse(text).unwrap();
        assert_eq!(stats.total_commands_processed, 98_765);
        assert_eq!(stats.instantaneous_ops_per_sec, 412.0);
        assert!(RedisStats::parse("# Stats\r\n").is_err());
    }
}

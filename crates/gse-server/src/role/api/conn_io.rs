//! One API connection's socket as the HTTP server sees it: it records when
//! bytes last moved (for the idle timeout, [`idle`]) and puts hyper's own
//! refusals into the envelope.
//!
//! hyper answers requests it cannot parse itself (400, 414, 431) with a
//! bare status line and no body, and offers no hook to change that. Those
//! answers are recognised on their way out: they are the only ones without
//! our `x-bkapi-request-id` header, and they are written whole, at the
//! start of a message (the writes are followed message by message through
//! their `content-length`). The envelope is written in their place.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::envelope::{Envelope, REQUEST_ID_HEADER, request_id};
use super::error::ApiError;

/// Longest request URI served; API paths are well under 200 bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (request line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request (hyper's own default).
pub const MAX_HEADERS: usize = 100;

/// When bytes last moved on a connection, and whether a request is being
/// handled on it.
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

/// A request being handled; dropping it counts as activity.
pub struct Busy(Arc<Activity>);

// === impl Activity ===

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since bytes last moved (or a request ended).
    fn quiet_for(&self) -> Duration {
        let since = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(since)
    }

    /// Marks a request as being handled until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Completes once the connection has been idle for `timeout`: no bytes
/// either way and no request being handled.
pub async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        let quiet = activity.quiet_for();
        if !activity.is_busy() && quiet >= timeout {
            return;
        }
        let wait = if activity.is_busy() {
            timeout
        } else {
            timeout - quiet
        };
        tokio::time::sleep(wait).await;
    }
}

/// Where the outgoing byte stream is, message by message.
#[derive(Debug, PartialEq)]
enum Out {
    /// The next byte starts a response.
    Head,
    /// This many bytes of the current response are still to go.
    Within(usize),
    /// A response we cannot follow (no length): stop inspecting.
    Opaque,
}

impl Out {
    /// Moves the outgoing position past the first `n` bytes of `buf`,
    /// which were written (they may end one response and start the next).
    fn advance(&mut self, mut buf: &[u8], mut n: usize) {
        while n > 0 {
            match *self {
                Out::Opaque => return,
                Out::Head => *self = message_len(buf).map_or(Out::Opaque, Out::Within),
                Out::Within(left) => {
                    let step = left.min(n);
                    n -= step;
                    buf = &buf[step..];
                    *self = if step == left {
                        Out::Head
                    } else {
                        Out::Within(left - step)
                    };
                }
            }
        }
    }
}

/// A connection's socket with [`Activity`] and envelope answers.
pub struct ApiStream {
    tcp: TcpStream,
    activity: Arc<Activity>,
    out: Out,
    /// An envelope answer still to be written in place of hyper's own.
    pending: Vec<u8>,
}

// === impl ApiStream ===

impl ApiStream {
    pub fn new(tcp: TcpStream, activity: Arc<Activity>) -> Self {
        activity.touch();
        ApiStream {
            tcp,
            activity,
            out: Out::Head,
            pending: Vec::new(),
        }
    }

    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.activity.touch();
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// The whole length (head and body) of the response starting `buf`, when
/// its head is in `buf` and says its body length (none: no body).
fn message_len(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding:") {
        return None;
    }
    let body = match head.split("\r\ncontent-length:").nth(1) {
        Some(rest) => rest.split("\r\n").next()?.trim().parse().ok()?,
        None => 0,
    };
    Some(head_end + body)
}

/// The envelope answer to put in place of `buf`, when `buf` is one of
/// hyper's own bare refusals.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .to_ascii_lowercase();
    let status = head.strip_prefix("http/1.1 ")?.get(..3)?;
    if head.contains(&format!("\r\n{REQUEST_ID_HEADER}:")) {
        return None;
    }
    let err = match status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())?
    {
        StatusCode::BAD_REQUEST => ApiError::BadHttp,
        StatusCode::URI_TOO_LONG => ApiError::UriTooLong {
            limit: MAX_URI_BYTES,
        },
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::HeadersTooLarge {
            bytes: MAX_HEAD_BYTES,
            count: MAX_HEADERS,
        },
        _ => return None,
    };
    tracing::debug!(error = %err, "request refused by the HTTP parser");
    let id = request_id(&Default::default());
    Some(Envelope::failure(&err).to_http_bytes(&id))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl AsyncRead for ApiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut this.tcp).poll_read(cx, buf));
        if buf.filled().len() > before {
            this.activity.touch();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if this.out == Out::Head
            && let Some(answer) = replacement(buf)
        {
            // hyper closes the connection after its own refusals.
            this.pending = answer;
            this.out = Out::Opaque;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.tcp).poll_write(cx, buf))?;
        if n > 0 {
            this.activity.touch();
            this.out.advance(buf, n);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
        x-bkapi-request-id: abc\r\ncontent-length: 2\r\n\r\n{}";

    #[test]
    fn hyper_refusals_become_envelopes_and_ours_are_left_alone() {
        for (status, code) in [(400, 1000400), (414, 1000414), (431, 1000431)] {
            let bare = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\ndate: now\r\n\r\n");
            let answer = replacement(bare.as_bytes()).expect("replaced");
            let text = String::from_utf8(answer).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            let body: serde_json::Value =
                serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
            assert_eq!(body["code"], code, "{text}");
            assert_eq!(body["result"], false);
        }
        assert!(replacement(OURS).is_none());
        assert!(replacement(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"{\"json\": \"HTTP/1.1 400 \"}").is_none());
    }

    #[test]
    fn two_responses_in_one_write_are_both_followed() {
        let mut both = OURS.to_vec();
        both.extend_from_slice(OURS);
        let mut out = Out::Head;
        out.advance(&both, OURS.len() + 10);
        assert_eq!(out, Out::Within(OURS.len() - 10));
        out.advance(&both[OURS.len() + 10..], OURS.len() - 10);
        assert_eq!(out, Out::Head);
        out.advance(b"garbage", 7);
        assert_eq!(out, Out::Opaque);
    }

    #[test]
    fn messages_are_followed_by_their_length() {
        assert_eq!(message_len(OURS), Some(OURS.len()));
        // The head alone is enough to know the whole length.
        assert_eq!(message_len(&OURS[..OURS.len() - 2]), Some(OURS.len()));
        let continue_100 = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(message_len(continue_100), Some(continue_100.len()));
        assert_eq!(
            message_len(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(message_len(b"HTTP/1.1 200 OK\r\ncontent-len"), None);
    }

    #[tokio::test]
    async fn idle_waits_for_quiet_and_for_requests_to_end() {
        let activity = Activity::new();
        activity.touch();
        let busy = activity.busy();
        let timeout = Duration::from_millis(200);
        let mut idle = Box::pin(idle(&activity, timeout));
        // Busy: not idle, however long it takes.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut idle)
                .await
                .is_err()
        );
        drop(busy);
        let ended = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), &mut idle)
            .await
            .expect("idle once the request ended");
        assert!(ended.elapsed() >= timeout);
    }
}

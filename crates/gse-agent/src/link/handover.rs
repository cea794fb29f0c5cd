//! Following a node's `HandOver` (K2) without ending running work.
//!
//! The node asks this agent to move and goes on serving it; the agent keeps
//! running what it has and what it is sent. At the first moment nothing runs
//! (no task, no file transfer, no plugin operation in flight, nothing queued
//! for the link) it says `HandOverReady` with the number of frames it has
//! read on this link; the node then checks nothing is on its way to the
//! agent and answers with a `Goodbye` carrying the redirect, which ends the
//! session as any redirect does. A request the agent could not follow within
//! the node's `within_ms` is dropped: the node no longer counts on it.

use std::time::Duration;

use gse_proto::link::{HandOver, HandOverReady};
use gse_proto::{Frame, MsgType};
use tokio::time::Instant;

/// While a request is pending, how often the agent checks whether it is
/// idle: a moment after the last task ends is soon enough.
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How often `HandOverReady` is said again while the agent stays idle and
/// the node has not answered (it saw work on its way to the agent then, or
/// lets agents go at its hand-over rate).
const READY_AGAIN: Duration = Duration::from_secs(1);

/// A node's request to move, not followed yet.
struct Pending {
    to: String,
    until: Instant,
    /// The `received` count and time of the last `HandOverReady` said.
    told: Option<(u64, Instant)>,
}

/// The hand-over state of one link session.
#[derive(Default)]
pub(super) struct HandOverState {
    pending: Option<Pending>,
}

impl HandOverState {
    /// The node asked this agent to move (a `HandOver` frame).
    pub(super) fn asked(&mut self, frame: &Frame, now: Instant) {
        let ask = match frame.decode::<HandOver>() {
            Ok(ask) if !ask.redirect.is_empty() => ask,
            Ok(_) => {
                tracing::warn!("ignoring a HandOver without a redirect");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a HandOver frame that does not decode");
                return;
            }
        };
        let within = Duration::from_millis(u64::from(ask.within_ms));
        tracing::info!(to = %ask.redirect, within = ?within, reason = %ask.reason, "the server asks this agent to move once nothing runs here");
        self.pending = Some(Pending {
            to: ask.redirect,
            until: now + within,
            told: None,
        });
    }

    /// A request is pending: idleness is worth checking.
    pub(super) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The `HandOverReady` to send now, if a request is pending and the
    /// agent is `idle`, having read `received` frames on this link. A
    /// request past its time is dropped.
    pub(super) fn ready(&mut self, idle: bool, received: u64, now: Instant) -> Option<Frame> {
        let p = self.pending.as_mut()?;
        if now >= p.until {
            tracing::info!(to = %p.to, "work kept running past the server's hand-over wait; staying on this node");
            self.pending = None;
            return None;
        }
        if !idle {
            return None;
        }
        let due = match p.told {
            None => true,
            Some((n, at)) => n != received || now.duration_since(at) >= READY_AGAIN,
        };
        if !due {
            return None;
        }
        p.told = Some((received, now));
        tracing::debug!(to = %p.to, received, "nothing runs here; ready to move");
        Some(Frame::new(
            MsgType::HandOverReady,
            0,
            &HandOverReady { received },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(within_ms: u32) -> Frame {
        let ask = HandOver {
            redirect: "127.0.0.9:28668".into(),
            reason: "balance".into(),
            within_ms,
        };
        Frame::new(MsgType::HandOver, 0, &ask)
    }

    fn received(frame: Option<Frame>) -> Option<u64> {
        frame.map(|f| f.decode::<HandOverReady>().unwrap().received)
    }

    #[test]
    fn ready_only_when_idle_and_only_within_the_wait() {
        let mut st = HandOverState::default();
        let t0 = Instant::now();
        assert_eq!(received(st.ready(true, 3, t0)), None, "not asked");

        st.asked(&ask(10_000), t0);
        assert!(st.is_pending());
        assert_eq!(received(st.ready(false, 4, t0)), None, "busy");
        assert_eq!(received(st.ready(true, 4, t0)), Some(4));
        assert_eq!(received(st.ready(true, 4, t0)), None, "said once");
        // Work arrived and ended: said again with the new count.
        assert_eq!(received(st.ready(true, 6, t0)), Some(6));
        // The node did not answer (work was on its way): again later.
        assert_eq!(received(st.ready(true, 6, t0 + READY_AGAIN)), Some(6));

        assert_eq!(
            received(st.ready(true, 6, t0 + Duration::from_secs(10))),
            None
        );
        assert!(!st.is_pending(), "dropped once the wait is over");
    }
}

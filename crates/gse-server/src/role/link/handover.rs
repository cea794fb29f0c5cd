//! K2 hand-overs that never end running work.
//!
//! Balancing picks a connected agent ([`LinkService::hand_over_one`]) and
//! asks it to move: an agent of link protocol 2 or later is sent `HandOver`
//! and keeps its link (and is sent work) until nothing runs on it; then it
//! says `HandOverReady`, and the connection seals the session (no more
//! deliveries) and says `Goodbye` with the redirect, but only if every frame
//! it wrote has reached the agent and none is queued, so no work is on its
//! way when the link ends. Meanwhile the agent counts as leaving
//! ([`Leaving`]), so balancing picks no more agents than needed. A request
//! the agent has not followed within [`HANDOVER_WAIT`] lapses (the count is
//! released, the agent may be picked again later): a forever-busy or
//! misbehaving agent never holds the count.
//!
//! An older agent ignores `HandOver`; it is moved the old way (a `Goodbye`
//! with the redirect, ending the link at once) only when it was sent no work
//! for [`BUSY_FOR_MS`], and never otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use gse_core::AgentKey;
use gse_core::seams::Epoch;
use gse_link::session::AgentChannel;
use gse_proto::link::{Goodbye, HandOverReady};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{LinkService, Session};

/// How long an agent asked to move counts as leaving: a task or transfer
/// running longer than this keeps the agent here, and balancing asks
/// another one (or this one again, later).
pub(super) const HANDOVER_WAIT: Duration = Duration::from_secs(180);

/// An agent sent work this recently is asked to move only when no idler
/// one can be; an agent that cannot wait for its work to end (protocol 1)
/// is never moved while this busy.
pub(super) const BUSY_FOR_MS: u64 = 5 * 60 * 1000;

/// One session's hand-over request.
#[derive(Default)]
pub(crate) struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    /// Where the agent was asked to go, and when.
    asked: Option<(String, Instant)>,
    /// The request is counted in [`Leaving`].
    counted: bool,
    /// When a request last lapsed: such an agent is asked again only when
    /// no other can be.
    lapsed_at: Option<Instant>,
}

impl Slot {
    /// Where the agent was asked to go, if it was (and the request did
    /// not lapse).
    pub(crate) fn to(&self) -> Option<String> {
        self.0.lock().asked.as_ref().map(|(to, _)| to.clone())
    }

    /// A request lapsed within the last [`HANDOVER_WAIT`].
    fn lapsed_lately(&self, now: Instant) -> bool {
        self.0
            .lock()
            .lapsed_at
            .is_some_and(|at| now.duration_since(at) < HANDOVER_WAIT)
    }
}

/// How long a handed-over agent's claim here outlives its link: work sent
/// to it meanwhile is refused as [`SendError::Moving`] (so its sender
/// waits for the agent's new claim instead of failing the work), and the
/// agent's record stays online. An agent that registered nowhere by then
/// is released, marked offline and alarmed as lost.
///
/// [`SendError::Moving`]: crate::cluster::sender::SendError::Moving
pub(super) const MOVE_GRACE: Duration = Duration::from_secs(30);

/// Why a link ends when its agent is handed over (told to the agent, and
/// how the link's end knows it was a move).
pub(super) const HANDED_OVER: &str = "handed over to a less loaded node";

/// Agents whose link here was handed over and whose claim is kept for
/// [`MOVE_GRACE`], by the claim's epoch.
#[derive(Default)]
pub(crate) struct Moved(Mutex<HashMap<AgentKey, Epoch>>);

impl Moved {
    pub(super) fn insert(&self, agent: AgentKey, epoch: Epoch) {
        self.0.lock().insert(agent, epoch);
    }

    /// Whether `agent`'s claim `epoch` is one that moved away.
    pub(super) fn holds(&self, agent: AgentKey, epoch: Epoch) -> bool {
        self.0.lock().get(&agent) == Some(&epoch)
    }

    /// Forgets the move of claim `epoch` (not a later one's).
    pub(super) fn remove(&self, agent: AgentKey, epoch: Epoch) {
        let mut moved = self.0.lock();
        if moved.get(&agent) == Some(&epoch) {
            moved.remove(&agent);
        }
    }
}

/// Most departures kept for the balancer to collect: it collects them
/// every tick, so this only bounds memory if it stopped.
const DEPARTED_KEPT: usize = 10_000;

/// Hand-overs asked and neither followed nor lapsed: left out of this
/// node's load without walking every session per registration, and
/// counted per target node so balancing adds them to its load meanwhile.
#[derive(Default)]
pub(crate) struct Leaving {
    total: AtomicUsize,
    /// Requests pending per agent address asked to go to.
    to: Mutex<HashMap<String, usize>>,
    /// Where agents asked to move went since last collected.
    departed: Mutex<Vec<String>>,
}

impl Leaving {
    pub(crate) fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests pending per agent address asked to go to.
    pub(crate) fn pending(&self) -> HashMap<String, usize> {
        self.to.lock().clone()
    }

    /// The addresses agents asked to move left for since the last call.
    pub(crate) fn take_departed(&self) -> Vec<String> {
        std::mem::take(&mut *self.departed.lock())
    }

    fn counted(&self, to: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.to.lock().entry(to.to_string()).or_default() += 1;
    }

    fn released(&self, to: &str) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut pending = self.to.lock();
        if let Some(n) = pending.get_mut(to) {
            *n -= 1;
            if *n == 0 {
                pending.remove(to);
            }
        }
    }

    /// Asks the agent of `slot` to go to `to`; false if it was asked
    /// already.
    pub(crate) fn ask(&self, slot: &Slot, to: String, now: Instant) -> bool {
        let mut s = slot.0.lock();
        if s.asked.is_some() {
            return false;
        }
        self.counted(&to);
        s.asked = Some((to, now));
        s.counted = true;
        true
    }

    /// Ends the request of `slot` if it was asked `wait` or longer before
    /// `now` and the agent is still here: it no longer counts as leaving.
    /// True if it lapsed now.
    pub(crate) fn lapse(&self, slot: &Slot, now: Instant, wait: Duration) -> bool {
        let mut s = slot.0.lock();
        let due = s
            .asked
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) >= wait);
        if !(due && s.counted) {
            return false;
        }
        if let Some((to, _)) = s.asked.take() {
            self.released(&to);
        }
        s.counted = false;
        s.lapsed_at = Some(now);
        true
    }

    /// The session of `slot` left this node (followed the request, closed
    /// or was replaced): its request no longer counts. Where it was asked
    /// to go stays readable ([`Slot::to`]).
    pub(crate) fn left(&self, slot: &Slot) {
        let mut s = slot.0.lock();
        if !std::mem::take(&mut s.counted) {
            return;
        }
        if let Some((to, _)) = &s.asked {
            self.released(to);
            let mut departed = self.departed.lock();
            if departed.len() < DEPARTED_KEPT {
                departed.push(to.clone());
            }
        }
    }
}

/// Agents let go per second at most: agents whose work ended at the same
/// moment still leave at the hand-over rate, not in a reconnect storm (an
/// agent let wait says it is ready again a moment later).
#[derive(Default)]
pub(crate) struct Pace {
    /// 0: no limit.
    per_s: AtomicU32,
    /// The current one-second window's start and the agents let go in it.
    window: Mutex<(Option<Instant>, u32)>,
}

impl Pace {
    pub(crate) fn set(&self, per_s: u32) {
        self.per_s.store(per_s, Ordering::Relaxed);
    }

    /// Whether one more agent may go at `now` (counted if so).
    fn allow(&self, now: Instant) -> bool {
        let per_s = self.per_s.load(Ordering::Relaxed);
        if per_s == 0 {
            return true;
        }
        let mut w = self.window.lock();
        match w.0 {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                if w.1 >= per_s {
                    return false;
                }
                w.1 += 1;
            }
            _ => *w = (Some(now), 1),
        }
        true
    }
}

/// How a session stands for being asked to move.
#[derive(Clone, Copy, Default)]
struct Standing {
    /// Asked already (and not lapsed).
    asked: bool,
    /// Sent work within [`BUSY_FOR_MS`].
    busy: bool,
    /// A request lapsed within [`HANDOVER_WAIT`].
    lapsed_lately: bool,
    /// Follows `HandOver` (link protocol 2 or later).
    follows: bool,
    /// Behind a gse-proxy: it reaches the cluster only through its
    /// proxy's link, so it is never asked to move (its proxy's link is
    /// what would have to).
    proxied: bool,
}

impl Standing {
    fn of(s: &Session, now_ms: u64, now: Instant) -> Self {
        Standing {
            asked: s.handover.to().is_some(),
            busy: now_ms.saturating_sub(s.last_work_ms.load(Ordering::Relaxed)) < BUSY_FOR_MS,
            lapsed_lately: s.handover.lapsed_lately(now),
            follows: s.follows_handover,
            proxied: s.proxied,
        }
    }

    /// The order in which sessions are asked, the lowest first; `None`:
    /// not to be asked (asked already, or an old agent that would lose
    /// its running work, or one behind a proxy).
    fn rank(self) -> Option<u8> {
        if self.asked || self.proxied || (self.busy && !self.follows) {
            return None;
        }
        Some(u8::from(self.lapsed_lately) * 2 + u8::from(self.busy))
    }
}

/// The first of the best-ranked `sessions` for which `target` names an
/// address, with that address.
fn pick<T>(
    sessions: impl IntoIterator<Item = (T, Standing)>,
    target: impl Fn(&T) -> Option<String>,
) -> Option<(T, String)> {
    let mut best: Option<(u8, T, String)> = None;
    for (s, standing) in sessions {
        let Some(rank) = standing.rank() else {
            continue;
        };
        if best.as_ref().is_some_and(|(r, ..)| *r <= rank) {
            continue;
        }
        let Some(to) = target(&s) else {
            continue;
        };
        best = Some((rank, s, to));
        if rank == 0 {
            break;
        }
    }
    best.map(|(_, s, to)| (s, to))
}

impl LinkService {
    /// Asks one connected agent for which `target` (given the agent's
    /// region) names an agent address to move there (see the module
    /// docs). Returns the address, if one was asked. Agents sent no work
    /// lately go first, then busy ones, then ones whose last request
    /// lapsed lately.
    pub fn hand_over_one(
        self: &Arc<Self>,
        target: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let sessions = self.sessions.lock();
        let now_ms = gse_core::now_ms();
        let now = Instant::now();
        let standing = sessions
            .iter()
            .map(|(key, s)| ((key, s), Standing::of(s, now_ms, now)));
        let ((&key, s), to) = pick(standing, |(_, s)| target(&s.region))?;
        if s.follows_handover {
            let ask = gse_proto::link::HandOver {
                redirect: to.clone(),
                reason: HANDED_OVER.into(),
                within_ms: HANDOVER_WAIT.as_millis() as u32,
            };
            // Queued like work, so it reaches the agent after what was
            // sent before it; a full queue: not now.
            if s.tx
                .try_send(Box::new(Frame::new(MsgType::HandOver, 0, &ask)))
                .is_err()
            {
                return None;
            }
        }
        if !self.leaving.ask(&s.handover, to.clone(), now) {
            return None;
        }
        tracing::info!(agent = %key, to = %to, waits = s.follows_handover, "handing the agent over to a less loaded node");
        metrics::counter!("gse_link_handovers_total").increment(1);
        if s.follows_handover {
            self.lapse_later(key, s.conn_id);
        } else {
            s.close.cancel();
        }
        Some(to)
    }

    /// Releases the request to `conn_id` once [`HANDOVER_WAIT`] has passed
    /// if the agent has not followed it by then.
    fn lapse_later(self: &Arc<Self>, key: AgentKey, conn_id: u64) {
        let svc = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(HANDOVER_WAIT) => {
                    if let Some(svc) = svc.upgrade() {
                        svc.lapse(key, conn_id);
                    }
                }
            }
        });
    }

    fn lapse(&self, key: AgentKey, conn_id: u64) {
        let sessions = self.sessions.lock();
        let Some(s) = sessions.get(&key).filter(|s| s.conn_id == conn_id) else {
            return;
        };
        if self
            .leaving
            .lapse(&s.handover, Instant::now(), HANDOVER_WAIT)
        {
            tracing::warn!(agent = %key, wait = ?HANDOVER_WAIT, "the agent did not follow its hand-over in time (work kept running on it); it counts here again");
            metrics::counter!("gse_link_handovers_lapsed_total").increment(1);
        }
    }

    /// The agent of `conn_id` said it is idle (`HandOverReady`): when it
    /// was asked to move, has read every frame written to it (`received`
    /// of `written`) and nothing is queued for it, its session takes no
    /// more deliveries and the address it goes to is returned; `None`
    /// keeps the link as it is.
    pub(super) fn seal(
        &self,
        key: AgentKey,
        conn_id: u64,
        (received, written): (u64, u64),
    ) -> Option<String> {
        let sessions = self.sessions.lock();
        let s = sessions.get(&key).filter(|s| s.conn_id == conn_id)?;
        let to = s.handover.to()?;
        // Deliveries queue under this lock, so nothing slips in between.
        let queued = s.tx.max_capacity() - s.tx.capacity();
        if received != written || queued > 0 {
            tracing::debug!(agent = %key, received, written, queued, "the agent is ready to move but work is on its way to it");
            return None;
        }
        if !self.pace.allow(Instant::now()) {
            tracing::debug!(agent = %key, "the agent is ready to move; letting it go a moment later (hand-over rate)");
            return None;
        }
        s.sealed.store(true, Ordering::Relaxed);
        Some(to)
    }
}

/// The agent says it is idle and ready to move (`HandOverReady`): when
/// nothing is on its way to it, it is told where to go and the link ends
/// (`Some(reason)`); otherwise it goes on being served.
pub(super) async fn ready<L: AgentChannel>(
    svc: &LinkService,
    link: &mut L,
    (key, conn_id): (AgentKey, u64),
    frame: &Frame,
    written: u64,
) -> Option<String> {
    let received = match frame.decode::<HandOverReady>() {
        Ok(r) => r.received,
        Err(e) => {
            tracing::warn!(agent = %key, error = %e, "ignoring a HandOverReady that does not decode");
            return None;
        }
    };
    let redirect = svc.seal(key, conn_id, (received, written))?;
    let reason = HANDED_OVER;
    let goodbye = Frame::new(
        MsgType::Goodbye,
        0,
        &Goodbye {
            reason: reason.into(),
            redirect,
        },
    );
    let _ = super::connection::send_within(link, goodbye, svc.config.heartbeat_timeout).await;
    Some(reason.into())
}

#[cfg(test)]
mod tests;

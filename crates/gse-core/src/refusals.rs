//! One log line per burst of refused connections, not one per connection.
//!
//! A listener under attack (or a misconfigured fleet) refuses thousands of
//! connections a minute; a WARN line for each would bury everything else
//! and cost more than the refusal itself. [`RefusalLog`] logs the first few
//! refusals of a window in full (so an operator sees at once what is
//! happening, and from where), counts the rest, and writes one summary per
//! window: `refused 1234 API connections in the last 10 s: over
//! api.max_connections_per_ip 1200, over api.max_connections 34; most from
//! 10.0.0.5 (1200)`.
//!
//! Written here rather than taken from a crate: the log-throttling crates
//! drop repeated events by their text, while this needs counts per reason
//! and per address folded into one line.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Refusals of one window logged one by one before the rest are only
/// counted.
const LOGGED_PER_WINDOW: usize = 3;
/// Distinct addresses counted per window (the summary names the top one);
/// refusals from further addresses count in the total only.
const MAX_PEERS: usize = 4096;

/// Counts refused connections of one listener and logs them in bursts.
pub struct RefusalLog {
    /// What is refused, plural: "API connections", "agent connections".
    what: &'static str,
    window: Duration,
    state: Mutex<Window>,
}

/// The refusals since the last summary.
struct Window {
    started: Instant,
    total: u64,
    logged: usize,
    reasons: BTreeMap<&'static str, u64>,
    peers: HashMap<IpAddr, u64>,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            started: now,
            total: 0,
            logged: 0,
            reasons: BTreeMap::new(),
            peers: HashMap::new(),
        }
    }

    /// The summary line, when some refusals were only counted.
    fn summary(&self, what: &str, now: Instant) -> Option<String> {
        if self.total <= self.logged as u64 {
            return None;
        }
        let secs = now.duration_since(self.started).as_secs().max(1);
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let mut line = format!(
            "refused {} {what} in the last {secs} s: {}",
            self.total,
            reasons.join(", ")
        );
        if let Some((ip, n)) = self.peers.iter().max_by_key(|(ip, n)| (**n, **ip)) {
            line.push_str(&format!("; most from {ip} ({n})"));
        }
        Some(line)
    }
}

// === impl RefusalLog ===

impl RefusalLog {
    /// A log for refusals of `what` (plural), summed up every `window`.
    pub fn new(what: &'static str, window: Duration) -> Self {
        RefusalLog {
            what,
            window,
            state: Mutex::new(Window::new(Instant::now())),
        }
    }

    /// Counts one refused connection from `peer` (`None`: not known, e.g.
    /// accept itself failed). `detail` (the full explanation, naming the
    /// peer) is built and logged at WARN only for the first few refusals
    /// of a window.
    pub fn refused(
        &self,
        reason: &'static str,
        peer: Option<IpAddr>,
        detail: impl FnOnce() -> String,
    ) {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(w.started) >= self.window {
            self.roll(&mut w, now);
        }
        w.total += 1;
        *w.reasons.entry(reason).or_default() += 1;
        if let Some(peer) = peer {
            if let Some(n) = w.peers.get_mut(&peer) {
                *n += 1;
            } else if w.peers.len() < MAX_PEERS {
                w.peers.insert(peer, 1);
            }
        }
        if w.logged < LOGGED_PER_WINDOW {
            w.logged += 1;
            let last = w.logged == LOGGED_PER_WINDOW;
            drop(w);
            let detail = detail();
            if last {
                tracing::warn!(
                    "{detail} (further refused {} are summed up every {:?})",
                    self.what,
                    self.window
                );
            } else {
                tracing::warn!("{detail}");
            }
        }
    }

    /// Writes the summary of a window that is over, if it has one.
    pub fn flush(&self) {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(w.started) >= self.window {
            self.roll(&mut w, now);
        }
    }

    /// Logs the summary of `w` and starts a new window.
    fn roll(&self, w: &mut Window, now: Instant) {
        if let Some(line) = w.summary(self.what, now) {
            tracing::warn!(refused = w.total, "{line}");
        }
        *w = Window::new(now);
    }

    /// Flushes every window until `shutdown`, so the last burst is summed
    /// up even when no refusal follows it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush(),
            }
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_is_summed_up_by_reason_and_top_address() {
        let now = Instant::now();
        let mut w = Window::new(now);
        for (reason, peer, n) in [("over a", "10.0.0.5", 7), ("over b", "10.0.0.6", 2)] {
            w.total += n;
            *w.reasons.entry(reason).or_default() += n;
            w.peers.insert(ip(peer), n);
        }
        w.logged = 3;
        let line = w
            .summary("API connections", now + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            line,
            "refused 9 API connections in the last 10 s: over a 7, over b 2; most from 10.0.0.5 (7)"
        );
    }

    #[test]
    fn no_summary_when_every_refusal_was_logged() {
        let log = RefusalLog::new("things", Duration::from_secs(3600));
        for _ in 0..LOGGED_PER_WINDOW {
            log.refused("why", Some(ip("10.0.0.1")), || "detail".into());
        }
        let w = log.state.lock().unwrap();
        assert_eq!(w.total, LOGGED_PER_WINDOW as u64);
        assert!(w.summary("things", Instant::now()).is_none());
    }

    #[test]
    fn only_the_first_few_details_are_built() {
        let log = RefusalLog::new("things", Duration::from_secs(3600));
        let mut built = 0;
        for _ in 0..100 {
            log.refused("why", Some(ip("10.0.0.1")), || {
                built += 1;
                "detail".into()
            });
        }
        assert_eq!(built, LOGGED_PER_WINDOW);
        assert_eq!(log.state.lock().unwrap().total, 100);
    }

    #[test]
    fn addresses_counted_are_bounded() {
        let log = RefusalLog::new("things", Duration::from_secs(3600));
        for i in 0..(MAX_PEERS as u32 + 10) {
            log.refused("why", Some(IpAddr::from(i.to_be_bytes())), String::new);
        }
        let w = log.state.lock().unwrap();
        assert_eq!(w.peers.len(), MAX_PEERS);
        assert_eq!(w.total, MAX_PEERS as u64 + 10);
    }
}

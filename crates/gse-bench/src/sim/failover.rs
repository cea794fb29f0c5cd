//! Simulated agents that survive the loss of their server (`gse-bench
//! failover`): each knows every node, in its own order, registers with the
//! first that answers, and when its link ends goes on to the next one, as
//! a real agent with several servers does.
//!
//! Agent i's order is node 0 first (where the bench puts every agent, the
//! node it then kills), then nodes 1..N rotated by i, so the survivors get
//! even shares. A failed attempt (TCP, TLS or Register) is retried on the
//! next node after a short back-off with jitter; an agent that fails
//! [`ATTEMPTS`] times in a row gives up and counts as a handshake failure
//! beyond retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{sleep, timeout};

use super::{CONNECT_WITHIN, Fleet, connect_to, heartbeat};

/// Attempts in a row before an agent gives up.
pub const ATTEMPTS: u32 = 20;
/// Back-off after a failed attempt: from this, doubling, at most
/// [`BACKOFF_MAX`], each with up to 100 % jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the fleet's failover did, shared by its agents.
#[derive(Default)]
pub struct Moves {
    /// Registrations after the first one of each agent.
    pub reregistered: AtomicU64,
    /// Attempts that failed (and were retried, or not).
    pub failed_attempts: AtomicU64,
    /// Agents that failed [`ATTEMPTS`] times in a row and gave up.
    pub gave_up: AtomicU64,
    /// Links that ended (the server died or closed them).
    pub links_lost: AtomicU64,
    /// Microseconds from the fleet's start to the latest re-registration.
    pub last_reregistered_us: AtomicU64,
    /// Set: an agent whose link ends does not come back (a host that died
    /// with its node).
    pub stay_down: AtomicBool,
}

/// Agent i's servers, in the order it tries them.
pub fn order(servers: &[SocketAddr], i: u32) -> Vec<SocketAddr> {
    let rest = &servers[1..];
    let mut order = vec![servers[0]];
    if !rest.is_empty() {
        let k = i as usize % rest.len();
        order.extend(rest[k..].iter().chain(&rest[..k]));
    }
    order
}

/// Runs agent `i` over `servers` until the fleet shuts down or it gives up.
pub async fn run(fleet: Arc<Fleet>, moves: Arc<Moves>, servers: Vec<SocketAddr>, i: u32) {
    let order = order(&servers, i);
    let mut at = 0;
    let mut registrations = 0u64;
    loop {
        let mut failures = 0;
        let (link, ack) = loop {
            let permit = fleet.handshakes.acquire().await;
            let server = order[at % order.len()];
            let outcome = tokio::select! {
                _ = fleet.shutdown.cancelled() => return,
                c = timeout(CONNECT_WITHIN, connect_to(&fleet, i, server)) => c,
            };
            drop(permit);
            let error = match outcome {
                Ok(Ok(ok)) => break ok,
                Ok(Err(e)) => e,
                Err(_) => anyhow::anyhow!("not registered with {server} within {CONNECT_WITHIN:?}"),
            };
            moves.failed_attempts.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            if failures >= ATTEMPTS {
                moves.gave_up.fetch_add(1, Ordering::Relaxed);
                return fleet.fail(i, error);
            }
            at += 1;
            sleep(backoff(failures)).await;
        };
        let since_start = fleet.started.elapsed().as_micros() as u64;
        if registrations == 0 {
            fleet.last_ack_us.fetch_max(since_start, Ordering::Relaxed);
            fleet.registered.fetch_add(1, Ordering::Relaxed);
        } else {
            moves
                .last_reregistered_us
                .fetch_max(since_start, Ordering::Relaxed);
            moves.reregistered.fetch_add(1, Ordering::Relaxed);
        }
        registrations += 1;
        let period = Duration::from_millis(u64::from(ack.heartbeat_interval_ms.max(100)));
        heartbeat(&fleet, link, period).await;
        if fleet.shutdown.is_cancelled() {
            return;
        }
        moves.links_lost.fetch_add(1, Ordering::Relaxed);
        if moves.stay_down.load(Ordering::Relaxed) {
            return;
        }
        // The node it was on is gone (or sent it away): the next one.
        at += 1;
    }
}

/// Back-off after `failures` failed attempts in a row, with jitter.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1 << failures.min(6).saturating_sub(1))
        .min(BACKOFF_MAX);
    base + base.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_starts_on_node_0_and_the_survivors_share_the_rest() {
        let servers: Vec<SocketAddr> = (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let port = |i| {
            order(&servers, i)
                .iter()
                .map(|a| a.port())
                .collect::<Vec<_>>()
        };
        assert_eq!(port(0), [1, 2, 3]);
        assert_eq!(port(1), [1, 3, 2]);
        assert_eq!(port(2), [1, 2, 3]);
        assert_eq!(order(&servers[..1], 7).len(), 1);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        assert!((BACKOFF_MIN..=BACKOFF_MIN * 2).contains(&backoff(1)));
        assert!((BACKOFF_MAX..=BACKOFF_MAX * 2).contains(&backoff(10)));
    }
}

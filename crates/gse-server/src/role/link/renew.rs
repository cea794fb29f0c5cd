//! Claim renewals, batched: every agent this node holds is checked
//! against the directory at once (one `MGET` per [`RENEW_BATCH`] agents in
//! Redis), every [`RENEW_EVERY`] or half of `heartbeat_timeout` if that
//! is shorter: often enough that a link another node took over (the agent
//! registered there while its old link here lingered) ends within
//! seconds, rarely enough that the directory is not asked per heartbeat.
//! A directory that cannot answer keeps every link: the agents are here.

use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;
use gse_core::seams::Epoch;

use super::LinkService;

/// How often every claim is renewed (at most).
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(15);
/// Claims renewed per directory call.
const RENEW_BATCH: usize = 1000;

impl LinkService {
    /// Renews the claims of every connected agent until shutdown.
    pub(super) async fn renew_claims(self: Arc<Self>) {
        let every = RENEW_EVERY.min(self.config.heartbeat_timeout / 2);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held: Vec<(AgentKey, Epoch)> = self
                .sessions
                .lock()
                .iter()
                .map(|(key, s)| (*key, s.epoch))
                .collect();
            for batch in held.chunks(RENEW_BATCH) {
                match self.directory.renew_many(batch).await {
                    Ok(current) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("agents' claims are renewed again");
                        }
                        for (&(key, epoch), held) in batch.iter().zip(current) {
                            if !held {
                                self.end_stale(key, epoch);
                            }
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "cannot renew the agents' claims; keeping their links");
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Ends `key`'s link if it is still the claim `epoch`, which a newer
    /// one superseded (the agent registered again, here or elsewhere).
    fn end_stale(&self, key: AgentKey, epoch: Epoch) {
        let sessions = self.sessions.lock();
        if let Some(s) = sessions.get(&key).filter(|s| s.epoch == epoch) {
            tracing::info!(agent = %key, "the agent registered again elsewhere; its link here is stale and ends");
            metrics::counter!("gse_link_stale_links_ended_total").increment(1);
            s.stale.store(true, std::sync::atomic::Ordering::Relaxed);
            s.close.cancel();
        }
    }
}

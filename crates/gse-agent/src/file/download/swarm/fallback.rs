//! Direct fallback (F3): pieces fetched through the node when P2P cannot
//! provide them: set aside after `p2p_attempts` failures, or, while the
//! source is unreachable over P2P, held by no connected peer. The first
//! reason is noted once per task ([`Swarm::note_fallback`]): a WARN line,
//! and the `fallback_reason` of the task's progress reports, so the
//! target's result says why its bytes came direct.

use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

use super::pieces::Phase;
use super::{DIRECT_DEPTH, Event, FALLBACK_AFTER, Swarm, Via};
use crate::file::codes::Failure;
use crate::file::direct::DirectError;
use crate::file::download::small::{DIRECT_ATTEMPTS, unobtainable};

// === impl Swarm: direct fallback ===

impl Swarm {
    /// Starts direct fetches for pieces that need them, a few at a time.
    pub(super) fn schedule_direct(&mut self, now: Instant) {
        let fallback = self.fallback_active(now);
        while self.direct_inflight < DIRECT_DEPTH {
            let Some((slot, piece, orphan)) = self.pick_direct(fallback) else {
                return;
            };
            if orphan {
                self.note_fallback(|s| s.source_unreachable());
            }
            self.fetch_direct(slot, piece);
        }
    }

    /// Notes (once per task) why pieces meant for P2P go direct: logged,
    /// and reported with the task's progress.
    pub(super) fn note_fallback(&self, why: impl FnOnce(&Self) -> String) {
        if self.ctx.stats.fallback.get().is_some() {
            return;
        }
        let why = why(self);
        tracing::warn!(reason = %why, "falling back to direct transfer through the server");
        let _ = self.ctx.stats.fallback.set(why);
    }

    /// Why the source gives us nothing over P2P, as far as we know.
    fn source_unreachable(&self) -> String {
        let source = &self.ctx.source_agent;
        match self.peers.iter().find(|p| p.is_source) {
            Some(p) => match &p.last_error {
                Some(e) => format!("source {} at {} unreachable over P2P: {e}", p.agent, p.addr),
                None => format!(
                    "source {} at {} not connected over P2P within {}s",
                    p.agent,
                    p.addr,
                    FALLBACK_AFTER.as_secs()
                ),
            },
            None if self.peers.is_empty() => format!(
                "no peer to fetch from: the source {source} has no P2P address (its [file] p2p_listen is empty or did not bind) and no other target serves pieces"
            ),
            None => format!(
                "the source {source} is not among this target's peers: it has no P2P address (its [file] p2p_listen is empty or did not bind), or this target is in another zone"
            ),
        }
    }

    /// A piece set aside for direct; or, in fallback, one no connected
    /// peer has (`true`: picked because of the fallback).
    fn pick_direct(&self, fallback: bool) -> Option<(usize, u32, bool)> {
        let active = || {
            self.files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.phase == Phase::Active)
        };
        for (slot, f) in active() {
            if let Some(p) = f.direct_wanted.iter().find(|&p| !f.direct_busy.contains(p)) {
                return Some((slot, p, false));
            }
        }
        if !fallback {
            return None;
        }
        // A random orphan, not the first: targets that all fall back at
        // once then fetch different pieces direct and trade them P2P,
        // instead of each pulling the whole file through the node.
        let mut rng = rand::rng();
        for (slot, f) in active() {
            let mut chosen = None;
            for (seen, p) in f
                .have
                .missing()
                .filter(|&p| !f.busy.contains(p) && f.avail.count(p) == 0)
                .enumerate()
            {
                // Reservoir sampling: each orphan equally likely, no Vec.
                if rng.random_range(0..=seen) == 0 {
                    chosen = Some(p);
                }
            }
            if let Some(p) = chosen {
                return Some((slot, p, true));
            }
        }
        None
    }

    fn fetch_direct(&mut self, slot: usize, piece: u32) {
        let file = &mut self.files[slot];
        let len = file.piece_len(piece);
        file.busy.insert(piece);
        file.direct_busy.insert(piece);
        self.direct_inflight += 1;
        self.inflight_bytes += len;
        let (ctx, entry, events, stop) = (
            self.ctx.clone(),
            file.entry,
            self.events_tx.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            let fetched = async {
                ctx.limits.acquire(len).await;
                ctx.direct
                    .fetch(
                        ctx.stream_id,
                        &ctx.transfer_id,
                        ctx.task_index,
                        entry,
                        piece,
                    )
                    .await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = fetched => r,
            };
            let _ = events
                .send(Event::Direct {
                    slot,
                    piece,
                    len,
                    result,
                })
                .await;
        });
    }

    pub(super) fn on_direct(
        &mut self,
        slot: usize,
        piece: u32,
        len: u64,
        result: Result<Bytes, DirectError>,
    ) -> Result<(), Failure> {
        self.direct_inflight -= 1;
        self.files[slot].direct_busy.remove(piece);
        match result {
            Ok(data) => {
                self.spawn_write(slot, piece, len, data, Via::Direct);
                Ok(())
            }
            Err(e) => {
                self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
                if e == DirectError::Busy {
                    self.ctx.limits.refund(len);
                    let file = &mut self.files[slot];
                    if !file.direct_wanted.contains(piece) {
                        file.busy.remove(piece);
                    }
                    return Ok(());
                }
                self.direct_failed(slot, piece, &e.to_string())
            }
        }
    }

    /// A direct fetch brought nothing usable: retry, up to a limit.
    pub(super) fn direct_failed(
        &mut self,
        slot: usize,
        piece: u32,
        why: &str,
    ) -> Result<(), Failure> {
        let file = &mut self.files[slot];
        if !file.direct_wanted.contains(piece) {
            file.busy.remove(piece);
        }
        let n = &mut file.direct_failures[piece as usize];
        *n = n.saturating_add(1);
        tracing::warn!(path = %file.path, piece, failures = *n, error = %why, "direct fetch failed");
        if u32::from(*n) >= DIRECT_ATTEMPTS {
            return Err(unobtainable(&file.path, piece, u32::from(*n), why));
        }
        Ok(())
    }
}

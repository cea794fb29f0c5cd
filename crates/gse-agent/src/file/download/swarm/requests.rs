//! Asking peers for pieces: which peer gets which request, and what its
//! answer means (data to verify, busy, missing, error), timeouts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gse_proto::link::{PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};
use rand::Rng;
use tokio::time::Instant;

use super::peers::Link;
use super::pieces::Phase;
use super::{PEER_MAX_FAILURES, REQUEST_TIMEOUT, Request, SOURCE_ESCAPE, Swarm, Via};
use crate::file::peer::Outgoing;
use crate::file::picker::{Window, pick_rarest_in};
use crate::file::wire::PieceDataBody;

/// Pieces considered per pick, from the first one missing: rarest first
/// among these, so a file arrives roughly in order and its whole-file
/// check (`check_as_written`) keeps up instead of running at the end.
const PICK_WINDOW: usize = 64;
/// Pieces a source is asked for are chosen among this many (the first
/// ones only it has).
const SOURCE_WINDOW: usize = 4;
/// Wait after a peer answered "busy"; doubles with repeats up to the max.
const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(320);

// === impl Swarm: requesting over P2P ===

impl Swarm {
    /// Gives every usable peer requests up to its depth, within the
    /// in-flight byte budget; non-source peers first.
    pub(super) fn schedule_p2p(&mut self, now: Instant) {
        if self.peers.is_empty() {
            return;
        }
        let escape = now - self.last_progress > SOURCE_ESCAPE;
        let start = self.rng.random_range(0..self.peers.len());
        for source_pass in [false, true] {
            for k in 0..self.peers.len() {
                let id = (start + k) % self.peers.len();
                if self.peers[id].is_source != source_pass {
                    continue;
                }
                while self.peers[id].can_take(now)
                    && self.inflight_bytes < self.ctx.service.settings.max_inflight_bytes
                {
                    let Some((slot, piece)) = self.pick_for(id, escape) else {
                        break;
                    };
                    self.send_request(id, slot, piece, now);
                }
            }
        }
    }

    /// The next piece to ask peer `id` for: rarest first among what it has
    /// and we lack; from a source only pieces no other peer has, unless
    /// nothing arrived for a while.
    fn pick_for(&mut self, id: usize, escape: bool) -> Option<(usize, u32)> {
        let Swarm {
            files, peers, rng, ..
        } = self;
        let peer = &peers[id];
        for (slot, file) in files.iter().enumerate() {
            if file.phase != Phase::Active {
                continue;
            }
            let theirs = match peer.have.get(&file.entry) {
                Some(set) => set,
                None if peer.is_source => &file.all,
                None => continue,
            };
            // From a source: one of the first few pieces nobody else has,
            // so it sends the file about once and roughly in order.
            let window = match (peer.is_source, escape) {
                (true, false) => Window {
                    from: file.cursor,
                    len: SOURCE_WINDOW,
                    max_count: Some(0),
                },
                _ => Window {
                    from: file.cursor,
                    len: PICK_WINDOW,
                    max_count: None,
                },
            };
            let front = (!peer.is_source)
                .then(|| file.front_piece(theirs))
                .flatten();
            let picked = front.or_else(|| {
                pick_rarest_in(&file.have, theirs, &file.busy, &file.avail, window, rng)
            });
            if let Some(piece) = picked {
                return Some((slot, piece));
            }
        }
        None
    }

    fn send_request(&mut self, id: usize, slot: usize, piece: u32, now: Instant) {
        let file = &mut self.files[slot];
        let len = file.piece_len(piece);
        file.busy.insert(piece);
        let request_id = self.next_request;
        self.next_request += 1;
        let req = PieceRequest {
            transfer_id: self.ctx.transfer_id.clone(),
            task_index: self.ctx.task_index,
            entry_index: file.entry,
            piece,
            request_id,
        };
        let out = Outgoing::Frame(Frame::new(MsgType::PieceRequest, request_id, &req));
        let peer = &mut self.peers[id];
        peer.inflight += 1;
        self.inflight_bytes += len;
        let Link::Up { tx, expected, .. } = &peer.link else {
            unreachable!("requests go to connected peers only");
        };
        expected.fetch_add(1, Ordering::AcqRel);
        let at = if self.ctx.limits.is_unlimited() {
            now
        } else {
            self.ctx.limits.reserve(len)
        };
        if at <= Instant::now() {
            // The queue is deeper than PER_PEER_DEPTH: full only if broken.
            let _ = tx.try_send(out);
        } else {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let _ = tx.send(out).await;
            });
        }
        let wait = at.saturating_duration_since(now);
        self.requests.insert(
            request_id,
            Request {
                peer: id,
                slot,
                piece,
                len,
                deadline: now + wait + REQUEST_TIMEOUT,
            },
        );
    }

    pub(super) fn on_data(&mut self, id: usize, attempt: u64, body: PieceDataBody) {
        if self.peers[id].attempt != attempt {
            return;
        }
        let Some(req) = self.requests.remove(&body.request_id) else {
            return;
        };
        self.peers[id].inflight = self.peers[id].inflight.saturating_sub(1);
        let matches = req.peer == id
            && body.entry_index == self.files[req.slot].entry
            && body.piece == req.piece;
        match PieceStatus::try_from(body.status) {
            Ok(PieceStatus::PieceOk) if matches => {
                self.peers[id].busy_streak = 0;
                self.spawn_write(req.slot, req.piece, req.len, body.data, Via::Peer(id));
            }
            Ok(PieceStatus::PieceBusy) => {
                self.release(&req);
                self.ctx.limits.refund(req.len);
                let peer = &mut self.peers[id];
                peer.busy_streak = (peer.busy_streak + 1).min(8);
                // Doubling from 20 ms, then up to half again at random, so
                // the peers a busy uploader turned away come back spread.
                let base = (BUSY_BACKOFF_MIN * (1 << (peer.busy_streak - 1))).min(BUSY_BACKOFF_MAX);
                let jitter = self.rng.random_range(0..=base.as_millis() as u64 / 2);
                peer.busy_until = Instant::now() + base + Duration::from_millis(jitter);
            }
            Ok(PieceStatus::PieceMissing) => {
                self.release(&req);
                self.ctx.limits.refund(req.len);
                self.peer_lacks(id, req.slot, req.piece);
            }
            _ => {
                self.release(&req);
                let why = if matches {
                    body.message
                } else {
                    "answered for another piece".into()
                };
                tracing::warn!(peer = %self.peers[id].agent, path = %self.files[req.slot].path, piece = req.piece, error = %why, "peer could not serve a piece");
                self.piece_failed(req.slot, req.piece, Some(id));
            }
        }
    }

    /// A request ended without data: the piece may be picked again.
    pub(super) fn release(&mut self, req: &Request) {
        let file = &mut self.files[req.slot];
        if !file.direct_wanted.contains(req.piece) {
            file.busy.remove(req.piece);
        }
        self.inflight_bytes = self.inflight_bytes.saturating_sub(req.len);
    }

    /// A piece failed over P2P (from `peer`, if it was the peer's fault):
    /// after `p2p_attempts` failures it goes direct.
    pub(super) fn piece_failed(&mut self, slot: usize, piece: u32, peer: Option<usize>) {
        let file = &mut self.files[slot];
        let n = &mut file.failures[piece as usize];
        *n = n.saturating_add(1);
        if u32::from(*n) >= self.ctx.p2p_attempts && !file.have.contains(piece) {
            file.direct_wanted.insert(piece);
            file.busy.insert(piece);
            let (path, n) = (file.path.clone(), *n);
            self.note_fallback(|s| {
                let last = peer
                    .map(|id| {
                        let p = &s.peers[id];
                        let error = p.last_error.as_deref().unwrap_or("no answer or a bad piece");
                        format!("; last from {} at {}: {error}", p.agent, p.addr)
                    })
                    .unwrap_or_default();
                format!("piece {piece} of {path} failed over P2P {n} times (file.p2p_attempts on the server){last}")
            });
        }
        if let Some(id) = peer {
            self.peers[id].failures += 1;
            if self.peers[id].failures >= PEER_MAX_FAILURES {
                self.ban(id, "too many bad pieces or errors");
            }
        }
    }

    /// Fails requests that went unanswered; their connections are dropped.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for rid in expired {
            let Some(req) = self.requests.remove(&rid) else {
                continue;
            };
            self.peers[req.peer].inflight = self.peers[req.peer].inflight.saturating_sub(1);
            self.release(&req);
            self.piece_failed(req.slot, req.piece, Some(req.peer));
            if !matches!(self.peers[req.peer].link, Link::Gone) {
                self.disconnect(req.peer, "a request went unanswered");
            }
        }
    }
}

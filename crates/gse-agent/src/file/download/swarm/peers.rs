//! The swarm's peers: connecting (with backoff), what each has, and the
//! task per connection that turns its frames into events.
//!
//! A peer's bitmaps come from its PeerHelloAck and its `Have`s; a source
//! that lists no bitmap for a file has all of it. Availability (for
//! rarest-first) counts only non-source peers, so "count 0" means "only
//! the source has it". Frames a peer sends beyond what we asked for end
//! its connection, which bounds what one peer can make us hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use gse_proto::MsgType;
use gse_proto::link::{Have, Peer, PeerHello, PeerHelloAck};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Event, PER_PEER_DEPTH, Swarm};
use crate::file::peer::{CONN_QUEUE, Outgoing, client::PeerReader, connect, run_writer};
use crate::file::piece_set::PieceSet;
use crate::file::wire::PieceDataBody;

/// First wait before reconnecting to a peer; doubles per failure.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The state of our connection to one peer.
pub(super) enum Link {
    Connecting {
        stop: CancellationToken,
    },
    Up {
        tx: mpsc::Sender<Outgoing>,
        /// PieceData frames the peer owes us.
        expected: Arc<AtomicUsize>,
        stop: CancellationToken,
    },
    Down {
        retry_at: Instant,
    },
    /// Removed from the peer set, or dropped for bad pieces.
    Gone,
}

/// One peer of the task.
pub(super) struct PeerState {
    pub addr: SocketAddr,
    pub agent: String,
    pub is_source: bool,
    /// Generation of the current connection attempt.
    pub attempt: u64,
    pub link: Link,
    /// Still on its first connection attempt.
    pub initial: bool,
    /// Bitmaps by entry index, as the peer announced them.
    pub have: HashMap<u32, PieceSet>,
    pub inflight: usize,
    /// Pieces received from this peer still being verified. They count
    /// against its depth (up to twice over) so a peer serving garbage
    /// faster than we can check it is not handed more meanwhile.
    pub verifying: usize,
    pub busy_until: Instant,
    pub busy_streak: u32,
    pub failures: u32,
    pub backoff: Duration,
    /// Why the last connection attempt failed or the last connection
    /// ended, for the fallback reason.
    pub last_error: Option<String>,
}

// === impl PeerState ===

impl PeerState {
    /// Up, or on its first attempt (which may still succeed).
    pub fn source_reachable(&self) -> bool {
        self.is_source
            && match self.link {
                Link::Up { .. } => true,
                Link::Connecting { .. } => self.initial,
                _ => false,
            }
    }

    /// Whether a request may go to this peer now.
    pub fn can_take(&self, now: Instant) -> bool {
        matches!(self.link, Link::Up { .. }) && self.has_room() && self.busy_until <= now
    }

    /// Below its request depth, counting pieces still being verified.
    fn has_room(&self) -> bool {
        self.inflight < PER_PEER_DEPTH && self.inflight + self.verifying < 2 * PER_PEER_DEPTH
    }

    /// When this peer needs the loop's attention next.
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        match self.link {
            Link::Up { .. } if self.busy_until > now && self.has_room() => Some(self.busy_until),
            Link::Down { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// This peer's bitmap for `entry`, creating it (full for a source).
    pub fn have_mut(&mut self, entry: u32, pieces: u32) -> &mut PieceSet {
        let is_source = self.is_source;
        self.have.entry(entry).or_insert_with(|| {
            if is_source {
                PieceSet::full(pieces)
            } else {
                PieceSet::new(pieces)
            }
        })
    }

    fn stop(&mut self) {
        if let Link::Connecting { stop } | Link::Up { stop, .. } = &self.link {
            stop.cancel();
        }
    }
}

// === impl Swarm: peers ===

impl Swarm {
    /// Makes `list` the peer set: new peers are dialled, missing ones dropped.
    pub(super) fn set_peers(&mut self, list: Vec<Peer>) {
        let mut wanted: HashMap<SocketAddr, Peer> = HashMap::new();
        for peer in list {
            if peer.agent == self.ctx.agent {
                continue;
            }
            match peer.addr.parse::<SocketAddr>() {
                Ok(addr) if Some(addr) != self.ctx.service.listen_addr => {
                    wanted.insert(addr, peer);
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(peer = %peer.agent, addr = %peer.addr, "ignoring a peer whose address is not ip:port")
                }
            }
        }
        for id in 0..self.peers.len() {
            let addr = self.peers[id].addr;
            if wanted.remove(&addr).is_none() && !matches!(self.peers[id].link, Link::Gone) {
                self.disconnect(id, "no longer in the peer set");
                self.peers[id].link = Link::Gone;
            }
        }
        for (addr, peer) in wanted {
            self.peers.push(PeerState {
                addr,
                agent: peer.agent,
                is_source: peer.is_source,
                attempt: 0,
                link: Link::Down {
                    retry_at: Instant::now(),
                },
                initial: true,
                have: HashMap::new(),
                inflight: 0,
                verifying: 0,
                busy_until: Instant::now(),
                busy_streak: 0,
                failures: 0,
                backoff: RECONNECT_MIN,
                last_error: None,
            });
            self.connect(self.peers.len() - 1);
        }
    }

    /// Dials peer `id` in the background.
    fn connect(&mut self, id: usize) {
        let stop = self.stop.child_token();
        let peer = &mut self.peers[id];
        peer.attempt += 1;
        peer.link = Link::Connecting { stop: stop.clone() };
        let hello = PeerHello {
            transfer_id: self.ctx.transfer_id.clone(),
            task_index: self.ctx.task_index,
            token: self.ctx.token.clone(),
            agent: self.ctx.agent.clone(),
        };
        let conn = Connection {
            peer: id,
            attempt: peer.attempt,
            addr: peer.addr,
            events: self.events_tx.clone(),
            stop,
        };
        let service = self.ctx.service.clone();
        tokio::spawn(async move {
            let dialled = tokio::select! {
                _ = conn.stop.cancelled() => return,
                r = connect(&service.peer_dialer, conn.addr, &hello) => r,
            };
            match dialled {
                Ok((ack, reader, writer)) => conn.run(ack, reader, writer).await,
                Err(e) => {
                    let _ = conn
                        .events
                        .send(Event::ConnectFailed {
                            peer: conn.peer,
                            attempt: conn.attempt,
                            error: e.explained(),
                        })
                        .await;
                }
            }
        });
    }

    pub(super) fn reconnect_due(&mut self, now: Instant) {
        for id in 0..self.peers.len() {
            if let Link::Down { retry_at } = self.peers[id].link
                && retry_at <= now
            {
                self.connect(id);
            }
        }
    }

    pub(super) fn on_connected(
        &mut self,
        id: usize,
        attempt: u64,
        ack: PeerHelloAck,
        tx: mpsc::Sender<Outgoing>,
        expected: Arc<AtomicUsize>,
    ) {
        let peer = &mut self.peers[id];
        let Link::Connecting { stop } = &peer.link else {
            return;
        };
        if peer.attempt != attempt {
            return;
        }
        let stop = stop.clone();
        peer.link = Link::Up { tx, expected, stop };
        peer.initial = false;
        peer.backoff = RECONNECT_MIN;
        tracing::debug!(peer = %peer.agent, addr = %peer.addr, source = peer.is_source, "peer connected");
        for eh in ack.have {
            let Some(&slot) = self.by_entry.get(&eh.entry_index) else {
                continue;
            };
            let pieces = self.files[slot].digest.piece_count();
            match PieceSet::from_bytes(pieces, &eh.bitmap) {
                Ok(set) => {
                    self.peers[id].have.insert(eh.entry_index, set);
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peers[id].agent, error = %e, "peer sent a bad have-bitmap");
                    return self.disconnect(id, "bad have-bitmap");
                }
            }
        }
        if !self.peers[id].is_source {
            for (entry, set) in &self.peers[id].have {
                if let Some(&slot) = self.by_entry.get(entry) {
                    self.files[slot].avail.add_peer(set);
                }
            }
        }
    }

    pub(super) fn on_connect_failed(&mut self, id: usize, attempt: u64, error: &str) {
        let peer = &mut self.peers[id];
        if peer.attempt != attempt || !matches!(peer.link, Link::Connecting { .. }) {
            return;
        }
        if peer.initial {
            tracing::info!(peer = %peer.agent, error = %error, "cannot reach peer; will retry");
        } else {
            tracing::debug!(peer = %peer.agent, error = %error, "cannot reach peer");
        }
        peer.initial = false;
        peer.last_error = Some(error.to_string());
        peer.link = Link::Down {
            retry_at: Instant::now() + peer.backoff,
        };
        peer.backoff = (peer.backoff * 2).min(RECONNECT_MAX);
    }

    pub(super) fn on_have(&mut self, id: usize, attempt: u64, have: Have) {
        if self.peers[id].attempt != attempt {
            return;
        }
        let Some(&slot) = self.by_entry.get(&have.entry_index) else {
            return;
        };
        let file = &mut self.files[slot];
        let pieces = file.digest.piece_count();
        let peer = &mut self.peers[id];
        let is_source = peer.is_source;
        let set = peer.have_mut(have.entry_index, pieces);
        for piece in have.pieces {
            if piece < pieces && set.insert(piece) && !is_source {
                file.avail.peer_got(piece);
            }
        }
    }

    /// The peer answered "missing" for a piece its bitmap had.
    pub(super) fn peer_lacks(&mut self, id: usize, slot: usize, piece: u32) {
        let file = &mut self.files[slot];
        let peer = &mut self.peers[id];
        let is_source = peer.is_source;
        if peer
            .have_mut(file.entry, file.digest.piece_count())
            .remove(piece)
            && !is_source
        {
            file.avail.peer_lost(piece);
        }
    }

    /// Drops the connection to `id` (its requests go back to the pool) and
    /// schedules a reconnect.
    pub(super) fn disconnect(&mut self, id: usize, reason: &str) {
        let was_up = matches!(
            self.peers[id].link,
            Link::Up { .. } | Link::Connecting { .. }
        );
        self.peers[id].stop();
        let lost: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.peer == id)
            .map(|(&rid, _)| rid)
            .collect();
        for rid in lost {
            if let Some(req) = self.requests.remove(&rid) {
                self.release(&req);
                self.piece_failed(req.slot, req.piece, None);
            }
        }
        let peer = &mut self.peers[id];
        if !peer.is_source {
            for (entry, set) in &peer.have {
                if let Some(&slot) = self.by_entry.get(entry) {
                    self.files[slot].avail.remove_peer(set);
                }
            }
        }
        peer.have.clear();
        peer.inflight = 0;
        if was_up {
            peer.last_error = Some(format!("connection ended: {reason}"));
        }
        if matches!(peer.link, Link::Gone) {
            return;
        }
        if was_up {
            tracing::debug!(peer = %peer.agent, reason, "peer connection ended");
        }
        peer.link = Link::Down {
            retry_at: Instant::now() + peer.backoff,
        };
        peer.backoff = (peer.backoff * 2).min(RECONNECT_MAX);
    }

    /// Drops `id` for the rest of the task.
    pub(super) fn ban(&mut self, id: usize, why: &str) {
        tracing::warn!(peer = %self.peers[id].agent, reason = why, "dropping a peer for this transfer");
        self.disconnect(id, why);
        self.peers[id].link = Link::Gone;
    }
}

/// One connection's task: it writes what the swarm queues and turns what
/// the peer sends into events.
struct Connection {
    peer: usize,
    attempt: u64,
    addr: SocketAddr,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
}

impl Connection {
    async fn run(
        self,
        ack: PeerHelloAck,
        reader: PeerReader,
        writer: crate::file::peer::client::PeerWriter,
    ) {
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = run_writer(writer, rx) => if let Err(e) = r {
                    tracing::debug!(error = %e, "peer writer ended");
                    stop.cancel();
                },
            }
        });
        let expected = Arc::new(AtomicUsize::new(0));
        let connected = Event::Connected {
            peer: self.peer,
            attempt: self.attempt,
            ack,
            tx,
            expected: expected.clone(),
        };
        if self.events.send(connected).await.is_err() {
            return;
        }
        let reason = self.read(reader, &expected).await;
        let _ = self
            .events
            .send(Event::Closed {
                peer: self.peer,
                attempt: self.attempt,
                reason,
            })
            .await;
    }

    /// Forwards the peer's frames until it closes or we stop.
    async fn read(&self, mut reader: PeerReader, expected: &AtomicUsize) -> String {
        loop {
            let frame = tokio::select! {
                _ = self.stop.cancelled() => return "stopped".into(),
                next = reader.next() => match next {
                    None => return "closed by the peer".into(),
                    Some(Err(e)) => return format!("bad frame: {e}"),
                    Some(Ok(frame)) => frame,
                },
            };
            let event = match frame.msg_type {
                MsgType::PieceData => {
                    let owed = expected
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                    if owed.is_err() {
                        return "sent a piece we did not ask for".into();
                    }
                    match frame.decode::<PieceDataBody>() {
                        Ok(body) => Event::Data {
                            peer: self.peer,
                            attempt: self.attempt,
                            body,
                        },
                        Err(e) => return e.to_string(),
                    }
                }
                MsgType::Have => match frame.decode::<Have>() {
                    Ok(have) => Event::Have {
                        peer: self.peer,
                        attempt: self.attempt,
                        have,
                    },
                    Err(e) => return e.to_string(),
                },
                _ => continue,
            };
            if self.events.send(event).await.is_err() {
                return "the download ended".into();
            }
        }
    }
}

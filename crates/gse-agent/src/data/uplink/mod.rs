//! The uplink: delivers batches to the assigned DataServer over a separate
//! mutual-TLS data link, at least once.
//!
//! Start at [`run`]. One task owns all state ([`book::Book`]): batches from
//! the batcher get a wire seq ([`seqs`], increasing across restarts) and go
//! to memory while the link is up, nothing waits in the spool and memory is
//! below `memory_max_mb`. With memory full on a link that keeps acking, the
//! batcher (and so the local socket) waits; otherwise batches go to the
//! spool ([`stored`]). Up to
//! `max_in_flight` batches are on the link at once ([`conn`]), spool first
//! (oldest first), then memory. A batch is forgotten only on `DataAck`
//! code 0; another code keeps it for a retry with backoff. A lost link or
//! acks slower than `ack_timeout` move every memory batch to the spool and
//! reconnect with backoff; the spool is then drained first. A new endpoint
//! (`DataAssign`, D4) stops sending on the old link, waits (bounded) for
//! its acks, then sends what is still unacked on the new link. While the
//! link is down, any assignment (a re-registration's `data_endpoint` too:
//! the server is back) ends the back-off and dials at once. A failed
//! connect says whether the endpoint came from the server or from
//! `[data] servers` ([`target`]).
//!
//! Delivery is at-least-once: a batch whose ack was lost is sent again with
//! the same seq, so (agent, seq) lets a consumer drop the duplicate. What is
//! lost: batches only in memory when the agent process itself is killed
//! (at most `memory_max_mb`; a clean stop spools them), and the oldest
//! spooled batches when the spool is full (counted, ERROR log).

mod book;
mod conn;
pub mod seqs;
pub mod stored;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use gse_link::Backoff;
use gse_proto::link::DataAck;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use conn::{DATA_PROTOCOL_VERSION, Dialer};
pub use target::{Assignment, Target};

use self::book::Book;
use self::conn::{Conn, Event};
use self::seqs::SeqLease;
use self::stored::{Pending, SpoolHandle};
use super::DataStats;
use super::batcher::OutBatch;

/// How long a move waits for the old link's acks before re-sending.
const MOVE_DRAIN_MAX: Duration = Duration::from_secs(5);
/// Housekeeping period (stalls, retries, move deadline).
const TICK: Duration = Duration::from_millis(100);
/// How often the data path's counters are logged (when they changed).
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// How long a clean stop waits for the batcher's last batches.
const STOP_FLUSH: Duration = Duration::from_secs(3);
/// A full memory queue holds the batcher back only while acks keep coming
/// at least this often; a slower link sends new batches to the spool.
const HOLD_BACK_MAX: Duration = Duration::from_secs(1);

/// Everything the uplink needs.
pub struct UplinkParts {
    pub dialer: Arc<Dialer>,
    /// The endpoint the node assigned (`None` = none: use `fallback`);
    /// every registration and `DataAssign` notifies, changed or not.
    pub assigned: watch::Receiver<Option<Assignment>>,
    pub fallback: Vec<String>,
    pub batches: mpsc::Receiver<OutBatch>,
    pub spool: SpoolHandle,
    pub seqs: SeqLease,
    pub stats: Arc<DataStats>,
    pub memory_max: u64,
    /// Largest batch the batcher cuts, bytes.
    pub batch_max: usize,
    pub max_in_flight: usize,
    pub ack_timeout: Duration,
    pub backoff: Backoff,
}

/// Why the uplink loop ended.
enum Stop {
    Shutdown,
    BatcherGone,
}

struct Uplink {
    p: UplinkParts,
    book: Book,
    conn: Option<Conn>,
    connecting: Option<(String, JoinHandle<Result<Conn, String>>)>,
    next_attempt: Instant,
    attempts: usize,
    connected_at: Option<Instant>,
    /// When the link last acknowledged a batch (or came up).
    last_ack: Instant,
    /// Set while moving to another DataServer: no sends on the old link.
    draining: Option<Instant>,
    /// The assignment channel still has a sender.
    assign_open: bool,
    /// Counters as last logged, and when.
    reported: (Instant, super::DataStatsSnapshot),
}

/// Runs until `shutdown`; then spools what is still in memory.
pub async fn run(parts: UplinkParts, shutdown: CancellationToken) {
    let mut up = Uplink {
        p: parts,
        book: Book::new(),
        conn: None,
        connecting: None,
        next_attempt: Instant::now(),
        attempts: 0,
        connected_at: None,
        last_ack: Instant::now(),
        draining: None,
        assign_open: true,
        reported: (Instant::now(), Default::default()),
    };
    let stop = up.serve(&shutdown).await;
    up.stop(stop).await;
}

/// The rule of [`Uplink::holding_back`]: wait only on a live link with
/// nothing spooled, memory full, and an ack within [`HOLD_BACK_MAX`].
fn hold_back(live: bool, spooled: u64, fits: bool, since_ack: Duration) -> bool {
    live && spooled == 0 && !fits && since_ack < HOLD_BACK_MAX
}

// === impl Uplink ===

impl Uplink {
    async fn serve(&mut self, shutdown: &CancellationToken) -> Stop {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.maybe_connect();
            self.fill_window().await;
            tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                b = self.p.batches.recv(), if !self.holding_back() => match b {
                    Some(b) => self.accept(b).await,
                    None => return Stop::BatcherGone,
                },
                ev = next_event(&mut self.conn) => self.on_event(ev).await,
                done = join_connect(&mut self.connecting) => self.on_connected(done).await,
                changed = self.p.assigned.changed(), if self.assign_open => {
                    match changed {
                        Ok(()) => self.on_assign(),
                        // The control link is gone for good: keep the last one.
                        Err(_) => self.assign_open = false,
                    }
                }
                _ = tick.tick() => self.housekeeping().await,
            }
        }
    }

    /// Whether the batcher (and so the local socket's writers) waits: the
    /// link is up and acking but memory is full. The spool is for a link
    /// that is down or stalled, not for one that is merely slower than the
    /// collectors: going through the disk there would only slow it more.
    fn holding_back(&self) -> bool {
        hold_back(
            self.conn.is_some() && self.draining.is_none(),
            self.p.spool.waiting(),
            self.book.fits(self.p.batch_max, self.p.memory_max),
            self.last_ack.elapsed(),
        )
    }

    /// Where the uplink should be connected now, and who said so.
    fn target(&self) -> Option<Target> {
        match self.p.assigned.borrow().as_ref() {
            Some(a) if !a.endpoint.is_empty() => Some(Target::assigned(a)),
            _ if self.p.fallback.is_empty() => None,
            _ => Some(Target::configured(
                &self.p.fallback[self.attempts % self.p.fallback.len()],
            )),
        }
    }

    /// The endpoint of [`Uplink::target`].
    fn target_endpoint(&self) -> Option<String> {
        self.target().map(|t| t.endpoint)
    }

    fn maybe_connect(&mut self) {
        if self.conn.is_some() || self.connecting.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        let Some(target) = self.target() else {
            return;
        };
        let dialer = self.p.dialer.clone();
        let endpoint = target.endpoint.clone();
        let task = tokio::spawn(dialer.connect(target));
        self.connecting = Some((endpoint, task));
    }

    async fn on_connected(&mut self, done: (String, Result<Conn, String>)) {
        let (endpoint, result) = done;
        match result {
            Ok(conn) if Some(&endpoint) == self.target_endpoint().as_ref() => {
                tracing::info!(endpoint = %endpoint, server = %conn.server_id, spooled = self.p.spool.waiting(), memory_bytes = self.book.mem_bytes(), "data link up");
                self.conn = Some(conn);
                self.connected_at = Some(Instant::now());
                self.last_ack = Instant::now();
            }
            Ok(_) => {
                tracing::debug!(endpoint = %endpoint, "data link up, but the assignment changed meanwhile; dropping it");
                self.next_attempt = Instant::now();
            }
            Err(reason) => {
                self.attempts += 1;
                let delay = self.p.backoff.next_delay();
                tracing::warn!(endpoint = %endpoint, retry_in = ?delay, spooled = self.p.spool.waiting(), "cannot open the data link: {reason}; retrying in {delay:.1?}, or at once when the server assigns an endpoint");
                self.next_attempt = Instant::now() + delay;
            }
        }
    }

    /// The node assigned a DataServer: at registration (the same one
    /// again, maybe) or by `DataAssign` (D4).
    fn on_assign(&mut self) {
        let target = self.target_endpoint();
        if let Some((endpoint, task)) = &self.connecting
            && Some(endpoint) != target.as_ref()
        {
            task.abort();
            self.connecting = None;
        }
        let Some(conn) = &self.conn else {
            // Down: the server just (re)assigned an endpoint, so it is up
            // again or moved us; waiting out the back-off would only delay.
            if self.connecting.is_none() {
                self.p.backoff.reset();
                self.next_attempt = Instant::now();
            }
            return;
        };
        if Some(&conn.endpoint) != target.as_ref() && self.draining.is_none() {
            tracing::info!(from = %conn.endpoint, to = ?target, in_flight = self.book.in_flight(), "DataServer reassigned; finishing the old link first");
            DataStats::bump(&self.p.stats.moves, 1);
            self.draining = Some(Instant::now() + MOVE_DRAIN_MAX.min(self.p.ack_timeout));
        }
    }

    /// Takes one batch from the batcher.
    async fn accept(&mut self, b: OutBatch) {
        let seq = match self.p.seqs.take() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("data batch of {} records lost: {e}", b.records());
                DataStats::bump(&self.p.stats.lost_records, b.records() as u64);
                return;
            }
        };
        let p = Pending::from_batcher(b, seq);
        let live = self.conn.is_some() && self.draining.is_none();
        if live && self.p.spool.waiting() == 0 && self.book.fits(p.bytes, self.p.memory_max) {
            self.book.push_memory(p);
        } else {
            self.spool(vec![p]).await;
        }
    }

    /// Writes batches to the spool, counting what a full spool dropped.
    async fn spool(&mut self, batches: Vec<Pending>) {
        let stats = &self.p.stats;
        for p in batches {
            match self.p.spool.push(&p).await {
                Ok(out) => {
                    DataStats::bump(&stats.spooled_batches, 1);
                    if out.dropped_batches > 0 {
                        DataStats::bump(&stats.spool_dropped_batches, out.dropped_batches);
                        tracing::error!(
                            dropped_batches = out.dropped_batches,
                            dropped_bytes = out.dropped_bytes,
                            total_dropped = stats.snapshot().spool_dropped_batches,
                            "data spool is full: dropped the oldest batches (raise data.spool_max_mb or fix the DataServer link)"
                        );
                    }
                }
                Err(e) => {
                    DataStats::bump(&stats.lost_records, p.records as u64);
                    tracing::error!(
                        seq = p.seq,
                        records = p.records,
                        "cannot spool a data batch; it is lost: {e}"
                    );
                }
            }
        }
        self.book.spool_grew();
    }

    /// Sends until the window is full or nothing is ready.
    async fn fill_window(&mut self) {
        if self.conn.is_none() || self.draining.is_some() {
            return;
        }
        let max = self.p.max_in_flight;
        while self.book.in_flight() < max {
            let now = Instant::now();
            if let Some(p) = self.book.take_due_retry(now) {
                self.send(p);
                continue;
            }
            if self.book.wants_spool() {
                let asked = max - self.book.in_flight();
                match self
                    .p
                    .spool
                    .peek_after(self.book.spool_cursor(), asked)
                    .await
                {
                    Ok(got) => {
                        let (send, ack) =
                            self.book
                                .take_spooled(got.batches, got.last, got.read, asked);
                        self.ack_spool(ack).await;
                        for p in send {
                            self.send(p);
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("cannot read the data spool: {e}");
                        return;
                    }
                }
            }
            match self.book.pop_memory() {
                Some(p) => self.send(p),
                None => return,
            }
        }
    }

    /// Hands one batch to the link's writer.
    fn send(&mut self, p: Pending) {
        let Some(conn) = &self.conn else { return };
        let body_len = p.body_len();
        if conn.max_batch_bytes > 0 && body_len > conn.max_batch_bytes {
            tracing::error!(
                seq = p.seq,
                bytes = body_len,
                limit = conn.max_batch_bytes,
                "data batch is larger than the DataServer takes; dropped (lower data.batch_max_kb)"
            );
            DataStats::bump(&self.p.stats.lost_records, p.records as u64);
            // Book it as stored so memory and the spool move past it.
            let (seq, now) = (p.seq, Instant::now());
            self.book.sent(p, now);
            self.book.on_ack(seq, 0, now);
            return;
        }
        // The writer's queue is as long as the window, so this only fails
        // when the link is gone; its event comes next.
        if conn.frames.try_send(p.frame.clone()).is_ok() {
            DataStats::bump(&self.p.stats.batches_sent, 1);
        }
        self.book.sent(p, Instant::now());
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ack(ack) => self.on_ack(ack).await,
            Event::Closed(reason) => self.link_lost(&reason).await,
        }
    }

    async fn on_ack(&mut self, ack: DataAck) {
        self.last_ack = Instant::now();
        let out = self.book.on_ack(ack.seq, ack.code, self.last_ack);
        if ack.code != 0 {
            DataStats::bump(&self.p.stats.refused_acks, 1);
            tracing::warn!(
                seq = ack.seq,
                code = ack.code,
                "DataServer could not store a batch; will retry: {}",
                ack.message
            );
            return;
        }
        if let Some(records) = out.stored {
            DataStats::bump(&self.p.stats.batches_acked, 1);
            DataStats::bump(&self.p.stats.records_acked, records as u64);
            if self
                .connected_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(30))
            {
                self.p.backoff.reset();
            }
        }
        self.ack_spool(out.spool_ack).await;
        if self.draining.is_some() && self.book.in_flight() == 0 {
            self.finish_move();
        }
    }

    async fn ack_spool(&mut self, point: Option<crate::data::spool::SeqNo>) {
        if let Some(point) = point
            && let Err(e) = self.p.spool.ack(point).await
        {
            tracing::error!("cannot mark spooled data as delivered (it will be sent again): {e}");
        }
    }

    /// The link failed: memory batches go to the spool, reconnect later.
    async fn link_lost(&mut self, reason: &str) {
        let Some(conn) = self.conn.take() else { return };
        let moving = self.draining.take().is_some();
        tracing::warn!(endpoint = %conn.endpoint, in_flight = self.book.in_flight(), "data link lost: {reason}");
        drop(conn);
        DataStats::bump(&self.p.stats.link_losses, 1);
        let memory = self.book.reset_link(false);
        self.spool(memory).await;
        self.next_attempt = if moving {
            Instant::now()
        } else {
            Instant::now() + self.p.backoff.next_delay()
        };
    }

    /// The old link is drained (or its time is up): unacked batches go first
    /// on the new link.
    fn finish_move(&mut self) {
        self.draining = None;
        if let Some(conn) = self.conn.take() {
            tracing::info!(endpoint = %conn.endpoint, unacked = self.book.in_flight(), "left the old DataServer");
        }
        self.book.reset_link(true);
        self.next_attempt = Instant::now();
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.reported.0) >= REPORT_EVERY {
            let stats = self.p.stats.snapshot();
            if stats != self.reported.1 {
                tracing::info!(
                    ?stats,
                    spooled = self.p.spool.waiting(),
                    "data path counters"
                );
            }
            self.reported = (now, stats);
        }
        if let Some(deadline) = self.draining
            && (now >= deadline || self.book.in_flight() == 0)
        {
            self.finish_move();
            return;
        }
        if let Some(wait) = self.book.oldest_wait(now)
            && wait > self.p.ack_timeout
        {
            let reason = format!("no ack for {wait:?} (data.ack_timeout)");
            self.link_lost(&reason).await;
        }
    }

    /// Clean stop: take the batcher's last batches, spool every memory
    /// batch, sync the spool.
    async fn stop(mut self, stop: Stop) {
        if matches!(stop, Stop::Shutdown) {
            let deadline = Instant::now() + STOP_FLUSH;
            while let Ok(Some(b)) = tokio::time::timeout_at(deadline, self.p.batches.recv()).await {
                let seq = match self.p.seqs.take() {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                self.spool(vec![Pending::from_batcher(b, seq)]).await;
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        let memory = self.book.reset_link(false);
        let n = memory.len();
        self.spool(memory).await;
        if let Err(e) = self.p.spool.sync().await {
            tracing::error!("cannot sync the data spool at stop: {e}");
        }
        tracing::info!(
            spooled_now = n,
            waiting = self.p.spool.waiting(),
            "data uplink stopped"
        );
    }
}

async fn next_event(conn: &mut Option<Conn>) -> Event {
    match conn {
        Some(c) => match c.events.recv().await {
            Some(ev) => ev,
            None => Event::Closed("the link's tasks ended".into()),
        },
        None => std::future::pending().await,
    }
}

async fn join_connect(
    connecting: &mut Option<(String, JoinHandle<Result<Conn, String>>)>,
) -> (String, Result<Conn, String>) {
    let Some((endpoint, task)) = connecting else {
        return std::future::pending().await;
    };
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(format!("connect task ended: {e}")),
    };
    let endpoint = endpoint.clone();
    *connecting = None;
    (endpoint, result)
}

#[cfg(test)]
mod hold_back_tests {
    use super::*;

    #[test]
    fn a_full_memory_waits_only_on_a_live_acking_link_with_nothing_spooled() {
        let recent = Duration::from_millis(10);
        assert!(hold_back(true, 0, false, recent));
        // Room in memory, link down or moving, data already spooled, or
        // acks stalled: take the batch (to memory or to the spool).
        assert!(!hold_back(true, 0, true, recent));
        assert!(!hold_back(false, 0, false, recent));
        assert!(!hold_back(true, 3, false, recent));
        assert!(!hold_back(true, 0, false, HOLD_BACK_MAX));
    }
}

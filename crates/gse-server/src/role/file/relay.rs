//! The direct path (F2, F3): a target (or relay) asks this node for a piece
//! on its agent link; the node asks the source through the sender (wherever
//! it is held), under a request id of its own, and hands the answer back
//! under the target's.
//!
//! A file this node pushes itself (`async_push_file`) has no source agent:
//! its pieces are answered here, from the bytes the request gave.
//!
//! Checks before forwarding: the transfer, task, entry and piece exist and
//! the asker is a target or relay of the task. A source the sender cannot
//! reach gets `PIECE_ERROR` (`PIECE_BUSY` for a full queue) as soon as the
//! send fails; more than [`MAX_OUTSTANDING_PER_SOURCE`]
//! requests waiting on one source get `PIECE_BUSY`. Requests the source
//! leaves unanswered for [`ANSWER_WITHIN`] are answered `PIECE_BUSY`
//! (the writer's tick sweeps them); a source whose link ends fails its
//! requests with `PIECE_ERROR`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gse_core::AgentKey;
use gse_proto::link::{PieceData, PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};

use super::model::{Phase, PushedFile};
use super::{FileService, metrics};
use crate::cluster::sender::{Delivery, SendError};

/// Requests waiting on one source before more are answered busy.
pub const MAX_OUTSTANDING_PER_SOURCE: usize = 64;
/// How long a source has to answer a forwarded request.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A request forwarded to a source, waiting for its answer.
struct Pending {
    requester: AgentKey,
    /// The id the requester chose.
    request_id: u64,
    source: AgentKey,
    /// The source's claim the request was delivered to (None until the
    /// send completes).
    source_conn: Option<Delivery>,
    since: Instant,
    transfer_id: String,
    task_index: u32,
    entry_index: u32,
    piece: u32,
}

/// Who answers a direct piece request.
enum Serve {
    /// The task's source agent, asked by this node.
    Source(AgentKey),
    /// This node, from the bytes of a pushed file.
    Here(std::sync::Arc<PushedFile>),
}

/// Forwarded requests by the id this node gave them.
#[derive(Default)]
pub(super) struct RelayTable {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    per_source: HashMap<AgentKey, usize>,
}

impl RelayTable {
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&p.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&p.source);
            }
        }
        Some(p)
    }

    /// Ids of the requests `pred` picks.
    fn ids(&self, pred: impl Fn(&Pending) -> bool) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| pred(p))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Number of requests waiting for an answer.
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

impl FileService {
    pub(super) fn on_piece_request(&self, agent: AgentKey, req: PieceRequest) {
        let source = match self.check_piece_request(agent, &req) {
            Ok(Serve::Source(source)) => source,
            Ok(Serve::Here(file)) => return self.serve_pushed(agent, &req, &file),
            Err(why) => {
                tracing::debug!(agent = %agent, task_id = %req.transfer_id, reason = %why, "refusing a direct piece request");
                return self.answer(agent, &req, PieceStatus::PieceError, why);
            }
        };
        let id = {
            let mut table = self.relay.lock();
            let waiting = table.per_source.get(&source).copied().unwrap_or(0);
            if waiting >= MAX_OUTSTANDING_PER_SOURCE {
                drop(table);
                let why = format!(
                    "the source {source} has {waiting} direct requests waiting already; ask again later"
                );
                return self.answer(agent, &req, PieceStatus::PieceBusy, why);
            }
            table.next_id += 1;
            let id = table.next_id;
            *table.per_source.entry(source).or_default() += 1;
            table.pending.insert(
                id,
                Pending {
                    requester: agent,
                    request_id: req.request_id,
                    source,
                    source_conn: None,
                    since: Instant::now(),
                    transfer_id: req.transfer_id.clone(),
                    task_index: req.task_index,
                    entry_index: req.entry_index,
                    piece: req.piece,
                },
            );
            id
        };
        let forward = PieceRequest {
            request_id: id,
            ..req.clone()
        };
        let me = self.me.clone();
        let frame = Frame::new(MsgType::PieceRequest, 0, &forward);
        self.sender.post_then(source, frame, move |sent| {
            let Some(me) = me.upgrade() else {
                return;
            };
            match sent {
                Ok(held) => {
                    if let Some(p) = me.relay.lock().pending.get_mut(&id) {
                        p.source_conn = Some(held);
                    }
                }
                Err(e) => {
                    // Already answered (or swept) when it is gone.
                    if me.relay.lock().remove(id).is_none() {
                        return;
                    }
                    let status = match e {
                        SendError::Busy { .. } => PieceStatus::PieceBusy,
                        _ => PieceStatus::PieceError,
                    };
                    me.answer(agent, &req, status, format!("cannot ask the source: {e}"));
                }
            }
        });
    }

    /// Who answers `req` (its task's source, or this node for a pushed
    /// file), or why it is refused.
    fn check_piece_request(&self, agent: AgentKey, req: &PieceRequest) -> Result<Serve, String> {
        let t = self
            .live(&req.transfer_id)
            .ok_or_else(|| format!("transfer {:?} is not running on this node", req.transfer_id))?;
        let task = req.task_index as usize;
        let plan = t
            .tasks
            .get(task)
            .ok_or_else(|| format!("transfer {} has no task {task}", t.id))?;
        let source = match (&plan.content, plan.source.usable()) {
            (Some(file), _) => Serve::Here(file.clone()),
            (None, Some(key)) => Serve::Source(key),
            (None, None) => {
                return Err(format!(
                    "the source {} of task {task} takes no part",
                    plan.source.name
                ));
            }
        };
        let st = t.state.lock();
        let run = &st.runs[task];
        if !plan.by_key.contains_key(&agent) && !run.relays.contains(&agent) {
            return Err(format!(
                "agent {agent} is not a target or relay of task {task} of {}",
                t.id
            ));
        }
        if run.phase != Phase::Running {
            return Err(format!("task {task} of {} is not running", t.id));
        }
        let shape = run
            .shapes
            .get(req.entry_index as usize)
            .ok_or_else(|| format!("task {task} has no entry {}", req.entry_index))?;
        if u64::from(req.piece) >= shape.pieces() {
            return Err(format!(
                "entry {} of task {task} has no piece {} ({} pieces)",
                req.entry_index,
                req.piece,
                shape.pieces()
            ));
        }
        drop(st);
        Ok(source)
    }

    pub(super) fn on_piece_data(&self, agent: AgentKey, data: PieceData) {
        let pending = {
            let mut table = self.relay.lock();
            match table.pending.get(&data.request_id) {
                Some(p) if p.source == agent => table.remove(data.request_id),
                _ => None,
            }
        };
        let Some(p) = pending else {
            tracing::debug!(agent = %agent, request_id = data.request_id, "a piece answer nobody waits for (late, or not from the asked source)");
            return;
        };
        let same_piece = data.transfer_id == p.transfer_id
            && data.task_index == p.task_index
            && data.entry_index == p.entry_index
            && data.piece == p.piece;
        if !same_piece {
            tracing::warn!(agent = %agent, task_id = %p.transfer_id, "a source answered a direct request with another piece");
            let why = "the source answered with another piece".to_string();
            return self.answer_pending(&p, PieceStatus::PieceError, why);
        }
        let bytes = data.data.len() as u64;
        let back = PieceData {
            request_id: p.request_id,
            ..data
        };
        let requester = p.requester;
        let back = Frame::new(MsgType::PieceData, 0, &back);
        self.sender.post_then(requester, back, move |sent| match sent {
            Ok(_) => metrics::bytes_relayed(bytes),
            Err(e) => {
                tracing::debug!(agent = %requester, error = %e, "cannot hand a direct piece back to its requester")
            }
        });
    }

    /// Answers requests their source left waiting too long; called every
    /// writer tick.
    pub(super) fn sweep_relays(&self, now: Instant) {
        let expired: Vec<Pending> = {
            let mut table = self.relay.lock();
            let ids = table.ids(|p| now.saturating_duration_since(p.since) >= ANSWER_WITHIN);
            ids.into_iter().filter_map(|id| table.remove(id)).collect()
        };
        for p in expired {
            let why = format!(
                "the source {} did not answer within {}; ask a peer or again later",
                p.source,
                humantime::format_duration(ANSWER_WITHIN)
            );
            self.answer_pending(&p, PieceStatus::PieceBusy, why);
        }
    }

    /// A source's claim `ended`: its requests fail; a requester's
    /// requests are forgotten.
    pub(super) fn relay_disconnect(&self, agent: AgentKey, ended: Delivery) {
        let (failed, _forgotten): (Vec<Pending>, Vec<Pending>) = {
            let mut table = self.relay.lock();
            let ids = table.ids(|p| {
                (p.source == agent && p.source_conn.is_none_or(|c| c == ended))
                    || p.requester == agent
            });
            ids.into_iter()
                .filter_map(|id| table.remove(id))
                .partition(|p| p.source == agent)
        };
        for p in failed {
            let why = format!("the source {agent} went offline; fetch the piece from a peer");
            self.answer_pending(&p, PieceStatus::PieceError, why);
        }
    }

    fn answer_pending(&self, p: &Pending, status: PieceStatus, message: String) {
        let req = PieceRequest {
            transfer_id: p.transfer_id.clone(),
            task_index: p.task_index,
            entry_index: p.entry_index,
            piece: p.piece,
            request_id: p.request_id,
        };
        self.answer(p.requester, &req, status, message);
    }

    /// Answers `req` with a piece of a file this node pushes.
    fn serve_pushed(&self, to: AgentKey, req: &PieceRequest, file: &PushedFile) {
        let size = u64::from(file.entry.piece_size.max(1));
        let start = (u64::from(req.piece) * size).min(file.bytes.len() as u64) as usize;
        let end = (start as u64 + size).min(file.bytes.len() as u64) as usize;
        let data = PieceData {
            transfer_id: req.transfer_id.clone(),
            task_index: req.task_index,
            entry_index: req.entry_index,
            piece: req.piece,
            request_id: req.request_id,
            status: PieceStatus::PieceOk as i32,
            data: file.bytes.slice(start..end),
            message: String::new(),
        };
        let bytes = (end - start) as u64;
        let frame = Frame::new(MsgType::PieceData, 0, &data);
        self.sender.post_then(to, frame, move |sent| match sent {
            Ok(_) => metrics::bytes_relayed(bytes),
            Err(e) => tracing::debug!(agent = %to, error = %e, "cannot hand a pushed file's piece to its target"),
        });
    }

    /// Answers `req` on behalf of the source, without data.
    fn answer(&self, to: AgentKey, req: &PieceRequest, status: PieceStatus, message: String) {
        let data = PieceData {
            transfer_id: req.transfer_id.clone(),
            task_index: req.task_index,
            entry_index: req.entry_index,
            piece: req.piece,
            request_id: req.request_id,
            status: status as i32,
            data: bytes::Bytes::new(),
            message,
        };
        let frame = Frame::new(MsgType::PieceData, 0, &data);
        self.sender
            .post(to, frame, "an answer to a direct piece request");
    }

    /// Direct requests waiting for their source now.
    pub fn relays_waiting(&self) -> usize {
        self.relay.lock().len()
    }
}

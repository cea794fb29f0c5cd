//! A source's manifest arrives: fail the task with the source's code, or
//! work out peer sets and send every target and relay its `FileStart`.
//!
//! The manifest's entries go to every target unchanged (entry indexes are
//! the manifest's order). The part of `FileStart` that all targets share is
//! encoded once; each target's body is that plus its own peers (and owner),
//! appended as a second encoding of the same message, which protobuf
//! decoders merge (repeated fields append, the last scalar wins). Each body
//! is checked against the link's frame limit: over it, the entries fail
//! with 119. Targets and relays are located (the directory, through the
//! sender) once the manifest is in, on a task of their own, since a frame
//! handler cannot wait.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use gse_core::AgentKey;
use gse_proto::link::{EntryType, FileEntry, FileManifest, FileRole, FileStart, Peer};
use gse_proto::{Frame, MsgType};

use super::codes::*;
use super::create::{Locations, fail_task, remaining_ms};
use super::model::{EntryShape, LiveTransfer, Outcome, Phase, StartBodies, TransferState};
use super::moving::Request;
use super::tracker::{self, Hop, Member, PeerPlan, Topology};
use super::{FileService, model};
use crate::cluster::sender::SendError;

/// What the `FileStart`s of one task go out with: who peers with whom,
/// and where each agent is held.
struct Outgoing<'a> {
    peers: &'a PeerPlan,
    located: &'a Locations,
}

impl FileService {
    pub(super) fn on_manifest(&self, agent: AgentKey, m: FileManifest) {
        let Some(t) = self.live(&m.transfer_id) else {
            tracing::debug!(agent = %agent, task_id = %m.transfer_id, "manifest for a transfer this node does not hold");
            return;
        };
        let task = m.task_index as usize;
        let Some(plan) = t.tasks.get(task) else {
            tracing::warn!(agent = %agent, task_id = %t.id, task = task, "manifest for a task the transfer does not have");
            return;
        };
        if plan.source.usable() != Some(agent) {
            tracing::warn!(agent = %agent, task_id = %t.id, task, "ignoring a manifest from an agent that is not the task's source");
            return;
        }
        if t.state.lock().runs[task].phase != Phase::Manifest {
            tracing::debug!(agent = %agent, task_id = %t.id, task, "ignoring a second manifest");
            return;
        }
        if m.error_code != 0 {
            let code = failure_code(m.error_code);
            let why = match m.error_message.as_str() {
                "" => format!("the source agent could not build the manifest (code {code})"),
                msg => msg.to_string(),
            };
            tracing::info!(task_id = %t.id, task, code, reason = %why, "the source could not build its manifest");
            self.change(&t, Some("failed"), |st, effect| {
                fail_task(st, plan, code, &why, effect)
            });
            return;
        }
        if !m.skipped.is_empty() {
            tracing::info!(task_id = %t.id, task, skipped = m.skipped.len(), "the source left special files (FIFOs, sockets, devices) out of the manifest");
        }
        self.manifest_in(t, task, m.entries);
    }

    /// Task `task`'s manifest is in (from its source, or made here for a
    /// pushed file): recorded, then every target and relay is located (on
    /// a task of its own) and sent its `FileStart`.
    pub(super) fn manifest_in(&self, t: Arc<LiveTransfer>, task: usize, entries: Vec<FileEntry>) {
        self.manifest_ok(&t, task, &entries);
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let plan = &t.tasks[task];
            let relays = t.hops.iter().flat_map(|h| h.relays.iter());
            let keys = plan
                .targets
                .iter()
                .chain(relays)
                .filter_map(|s| s.usable())
                .collect();
            let located = me.locate_all(keys).await;
            me.start_targets(&t, task, entries, &located);
        });
    }

    /// Records the manifest's shape and size; the task runs.
    fn manifest_ok(&self, t: &Arc<LiveTransfer>, task: usize, entries: &[FileEntry]) {
        let shapes: Vec<EntryShape> = entries
            .iter()
            .map(|e| EntryShape {
                is_file: e.r#type == EntryType::EntryFile as i32,
                size: e.size,
                piece_size: e.piece_size,
            })
            .collect();
        let size = shapes
            .iter()
            .filter(|s| s.is_file)
            .fold(0u64, |sum, s| sum.saturating_add(s.size));
        let files = shapes.iter().filter(|s| s.is_file).count();
        let plan = &t.tasks[task];
        self.change(t, Some("finished"), |st, effect| {
            let run = &mut st.runs[task];
            run.manifest_ok = true;
            run.shapes = shapes;
            run.phase = Phase::Running;
            st.set_size(task, size, effect);
            let info = format!("serving {files} files, {size} bytes");
            st.set_running(plan.upload, info, effect);
        });
    }

    /// Works out the task's peer sets and sends every target and relay
    /// its `FileStart`.
    fn start_targets(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        entries: Vec<FileEntry>,
        located: &Locations,
    ) {
        let plan = &t.tasks[task];
        let peers = self.peer_plan(t, task);
        let entry_count = entries.len();
        let common = self.common(t, task, entries);
        let limit = self.sender.max_frame_bytes();
        if common.target.len() > limit {
            let why = too_large(task, entry_count, common.target.len(), limit);
            tracing::warn!(task_id = %t.id, task, bytes = common.target.len(), limit, "a manifest does not fit one FileStart frame");
            self.change(t, Some("failed"), |st, effect| {
                fail_task(st, plan, ERR_TOO_LARGE, &why, effect)
            });
            return;
        }
        let common = Arc::new(common);
        let (sent, relays) = self.change(t, Some("failed"), |st, effect| {
            if st.runs[task].phase == Phase::Running {
                // Kept for agents that follow a move (`moving`).
                st.runs[task].start = Some(common.clone());
            }
            let out = Outgoing {
                peers: &peers,
                located,
            };
            let sent = self.send_targets(t, task, &out, &common.target, st, effect);
            let relays = self.send_relays(t, task, &out, &common.relay, st, effect);
            (sent, relays)
        });
        tracing::info!(task_id = %t.id, task, targets = sent, relays, entries = entry_count, "FileStart sent");
    }

    /// Every member of the task as the tracker sees it, and its plan.
    fn peer_plan(&self, t: &LiveTransfer, task: usize) -> PeerPlan {
        let plan = &t.tasks[task];
        let member = |slot: &model::AgentSlot| {
            let key = slot.usable()?;
            let info = self.peer_info(key);
            Some(Member {
                agent: key.to_string(),
                zone: info
                    .as_ref()
                    .map_or_else(|| slot.zone.clone(), |i| i.zone.clone()),
                addr: match info {
                    Some(i) => i.p2p_addr,
                    None => slot.p2p_addr,
                },
                area: key.cloud_id,
            })
        };
        let source = member(&plan.source).unwrap_or_default();
        let open: Vec<bool> = {
            let st = t.state.lock();
            (0..plan.targets.len() as u32)
                .map(|i| !st.entries[plan.download(i) as usize].is_final())
                .collect()
        };
        let targets: Vec<Option<Member>> = plan
            .targets
            .iter()
            .zip(open)
            .map(|(slot, open)| member(slot).filter(|_| open))
            .collect();
        let hops: Vec<Hop> = t
            .hops
            .iter()
            .map(|h| Hop {
                zone: h.zone.clone(),
                relays: h.relays.iter().map(member).collect(),
            })
            .collect();
        let top = Topology {
            source: &source,
            targets: &targets,
            hops: &hops,
            pass_through: &t.pass_through,
        };
        let limit = self.config.peer_set_limit as usize;
        tracker::plan(&top, limit, &mut rand::rng())
    }

    /// The shared parts of the task's `FileStart`s, encoded once.
    fn common(&self, t: &LiveTransfer, task: usize, entries: Vec<FileEntry>) -> StartBodies {
        let plan = &t.tasks[task];
        let mut msg = FileStart {
            transfer_id: t.id.clone(),
            task_index: task as u32,
            role: FileRole::RoleTarget as i32,
            target_dir: plan.target.store_dir.clone(),
            target_name: plan.target.file_name.clone(),
            permission: plan.target.permission,
            owner: plan.target.owner.clone(),
            auto_mkdir: t.auto_mkdir,
            download_bytes_per_s: t.download_bps,
            upload_bytes_per_s: t.upload_bps,
            timeout_ms: remaining_ms(t),
            entries,
            peers: Vec::new(),
            source_agent: plan.source.key.map(|k| k.to_string()).unwrap_or_default(),
            // A pushed file has no source to fetch from over P2P: the
            // whole of it comes direct, from this node.
            direct_limit: match &plan.content {
                Some(file) => self.config.direct_limit_bytes.max(file.entry.size),
                None => self.config.direct_limit_bytes,
            },
            p2p_attempts: self.config.p2p_attempts,
            token: t.token.clone(),
        };
        let target = Frame::new(MsgType::FileStart, 0, &msg).body;
        msg.role = FileRole::RoleRelay as i32;
        msg.target_dir.clear();
        msg.target_name.clear();
        msg.permission = 0;
        msg.owner.clear();
        msg.auto_mkdir = false;
        let relay = Frame::new(MsgType::FileStart, 0, &msg).body;
        StartBodies { target, relay }
    }

    /// Sends each target agent its `FileStart` (once per agent, however
    /// many times it is named); returns how many went out.
    fn send_targets(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        out: &Outgoing<'_>,
        common: &Bytes,
        st: &mut TransferState,
        effect: &mut model::Effect,
    ) -> usize {
        let Outgoing { peers, located } = *out;
        let plan = &t.tasks[task];
        for (i, reach) in peers.targets.iter().enumerate() {
            if let Some(Err(why)) = reach {
                st.close(
                    plan.download(i as u32),
                    Outcome::failed(ERR_ZONE_REFUSED, why.clone()),
                    effect,
                );
            }
        }
        let limit = self.sender.max_frame_bytes();
        let mut sent = 0;
        let mut agents: Vec<(&AgentKey, &Vec<u32>)> = plan.by_key.iter().collect();
        agents.sort_unstable_by_key(|(_, slots)| slots.first().copied());
        for (&key, slots) in agents {
            let open: Vec<u32> = slots
                .iter()
                .copied()
                .filter(|&s| !st.entries[plan.download(s) as usize].is_final())
                .collect();
            let Some(my_peers) = open.iter().find_map(|&s| match &peers.targets[s as usize] {
                Some(Ok(p)) => Some(p.clone()),
                _ => None,
            }) else {
                continue;
            };
            let owner = &plan.owners[open[0] as usize];
            let body = with_suffix(common, &my_peers, owner, &plan.target.owner);
            if body.len() > limit {
                let why = too_large(task, st.runs[task].shapes.len(), body.len(), limit);
                for s in open {
                    st.close(
                        plan.download(s),
                        Outcome::failed(ERR_TOO_LARGE, why.clone()),
                        effect,
                    );
                }
                continue;
            }
            let frame = Frame {
                msg_type: MsgType::FileStart,
                stream_id: 0,
                body,
            };
            let Some(Ok(at)) = located.get(&key) else {
                let why = match located.get(&key) {
                    Some(Err(why)) => why.clone(),
                    _ => SendError::Offline(key),
                };
                let name = &plan.targets[open[0] as usize].name;
                for s in open {
                    let down = Outcome::failed(ERR_AGENT_DOWN, why.for_host(name));
                    st.close(plan.download(s), down, effect);
                }
                continue;
            };
            st.runs[task].peers.insert(key, my_peers);
            if self.send_request(t, (task, key, Request::Start), at, frame, st, effect) {
                sent += 1;
            }
        }
        sent
    }

    /// Sends each usable relay its `FileStart`; a relay that cannot be
    /// reached is logged (its zone's targets fetch direct through the node).
    fn send_relays(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        out: &Outgoing<'_>,
        common: &Bytes,
        st: &mut TransferState,
        effect: &mut model::Effect,
    ) -> usize {
        let Outgoing { peers, located } = *out;
        let limit = self.sender.max_frame_bytes();
        let mut sent = 0;
        for (hop, relay_peers) in t.hops.iter().zip(&peers.relays) {
            for (slot, my_peers) in hop.relays.iter().zip(relay_peers) {
                let (Some(key), Some(my_peers)) = (slot.usable(), my_peers) else {
                    continue;
                };
                if st.runs[task].relays.contains(&key) {
                    continue;
                }
                let body = with_suffix(common, my_peers, "", "");
                if body.len() > limit {
                    tracing::warn!(task_id = %t.id, task, relay = %slot.name, bytes = body.len(), limit, "a relay's FileStart is over the frame limit; not sent");
                    continue;
                }
                let Some(Ok(at)) = located.get(&key) else {
                    tracing::warn!(task_id = %t.id, task, relay = %slot.name, "cannot start a zone-chain relay: it is not held by any node; its zone's targets fetch from the others or direct");
                    continue;
                };
                let frame = Frame {
                    msg_type: MsgType::FileStart,
                    stream_id: 0,
                    body,
                };
                st.runs[task].peers.insert(key, my_peers.clone());
                if self.send_request(t, (task, key, Request::Start), at, frame, st, effect) {
                    sent += 1;
                }
            }
        }
        sent
    }
}

/// `common` followed by an encoding of this agent's own fields.
pub(super) fn with_suffix(common: &Bytes, peers: &[Peer], owner: &str, task_owner: &str) -> Bytes {
    let own = FileStart {
        peers: peers.to_vec(),
        // The task's owner is in `common` already; an agent's own `user`
        // applies only when the task names none.
        owner: if task_owner.is_empty() {
            owner.to_string()
        } else {
            String::new()
        },
        ..FileStart::default()
    };
    let own = Frame::new(MsgType::FileStart, 0, &own).body;
    let mut out = BytesMut::with_capacity(common.len() + own.len());
    out.put_slice(common);
    out.put_slice(&own);
    out.freeze()
}

/// The 119 message of a task whose `FileStart` is over the frame limit.
fn too_large(task: usize, entries: usize, bytes: usize, limit: usize) -> String {
    format!(
        "the manifest of task {task} ({entries} entries) encodes to {bytes} bytes for one agent, over the agent link's frame limit of {limit} bytes (link.max_frame_bytes); send fewer files per task, or raise link.max_frame_bytes on the server and the agents"
    )
}

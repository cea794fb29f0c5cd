//! Starting a transfer: check its pass-throughs, resolve every agent, list
//! every entry, ask each task's source for its manifest.
//!
//! Every entry exists from the first poll on (bk-job fails a task whose
//! result stays empty): reachable ones waiting (status 0, 115), the others
//! final at once (117 unknown/offline/unreachable, 701 for containers). An
//! unusable source fails its upload and all its downloads. Every agent is
//! located through the sender (the directory says where it is held). The
//! transfer is registered before any frame goes out, and the source's
//! delivery is recorded as its request is sent, under the transfer's lock,
//! so a disconnect right after the send is seen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use gse_core::AgentRef;
use gse_core::seams::AgentRecord;
use gse_core::seams::state_store::FileEntryRecord;
use gse_proto::link::{EntryType, FileEntry, FileManifestRequest};
use gse_proto::{Frame, MsgType};

use super::codes::*;
use super::model::{
    AgentSlot, Effect, HopPlan, LiveTransfer, Outcome, Phase, PushedFile, TaskPlan, TaskRun,
    TransferState,
};
use super::moving::Request;
use super::spec::{
    AgentSpec, BYTES_PER_MB, FileKind, FileTaskSpec, SourceFrom, TransferSpec, ZonePair,
};
use super::{FileError, FileService, metrics};
use crate::cluster::sender::{Located, SendError};
use crate::role::task::unknown_agent;

/// Where each known agent of a transfer is, or why it cannot be reached.
pub(super) type Locations = HashMap<gse_core::AgentKey, Result<Located, SendError>>;

impl FileService {
    /// Starts a transfer for `app_code` and returns its id; the results come
    /// later.
    #[tracing::instrument(skip_all, fields(task_id))]
    pub async fn start_transfer(
        &self,
        spec: TransferSpec,
        app_code: &str,
    ) -> Result<String, FileError> {
        self.check_pass_through(&spec.pass_through, app_code)?;
        let task_id = self.new_task_id();
        tracing::Span::current().record("task_id", task_id.as_str());
        let records = self.store.get_agents(&agent_refs(&spec)).await?;
        let keys = records.iter().flatten().map(|r| r.key).collect();
        let located = self.locate_all(keys).await;
        let (transfer, effect) = self.build(&task_id, &spec, records, &located);
        let transfer = Arc::new(transfer);
        self.register(&transfer);
        self.apply(&transfer, effect, None);
        let asked = self.request_manifests(&transfer, &located);
        self.push_contents(&transfer);
        metrics::transfer_started();
        tracing::info!(
            task_id = %task_id,
            app = app_code,
            tasks = spec.tasks.len(),
            targets = spec.tasks.iter().map(|t| t.targets.len()).sum::<usize>(),
            hops = spec.zone_chain.len(),
            manifests_asked = asked,
            "file transfer started"
        );
        Ok(task_id)
    }

    /// Refuses pass-throughs the server config does not allow `app_code`.
    fn check_pass_through(&self, pairs: &[ZonePair], app_code: &str) -> Result<(), FileError> {
        for (index, p) in pairs.iter().enumerate() {
            if !self
                .config
                .allows_pass_through(&p.from_zone, &p.to_zone, app_code)
            {
                return Err(FileError::PassThroughRefused {
                    index,
                    from_zone: p.from_zone.clone(),
                    to_zone: p.to_zone.clone(),
                    app_code: app_code.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The transfer in memory with every entry in its first state, and
    /// what closing the unusable ones did.
    fn build(
        &self,
        task_id: &str,
        spec: &TransferSpec,
        records: Vec<Option<AgentRecord>>,
        located: &Locations,
    ) -> (LiveTransfer, Effect) {
        let mut records = records.into_iter();
        let mut next = |a: &AgentSpec| self.slot(a, records.next().flatten(), located);
        let mut entries = Vec::new();
        let mut tasks = Vec::with_capacity(spec.tasks.len());
        let mut runs = Vec::with_capacity(spec.tasks.len());
        for (i, task) in spec.tasks.iter().enumerate() {
            let source = match task.source.agent() {
                Some(agent) => next(agent),
                // This node sends the bytes itself.
                None => AgentSlot::default(),
            };
            let targets: Vec<AgentSlot> = task.targets.iter().map(&mut next).collect();
            let plan = plan_task(task, source, targets, entries.len() as u32);
            entries.extend(first_entries(i as u32, &plan));
            runs.push(TaskRun::new(plan.upload, plan.targets.len() as u32));
            tasks.push(plan);
        }
        let hops: Vec<HopPlan> = spec
            .zone_chain
            .iter()
            .map(|h| HopPlan {
                zone: h.zone.clone(),
                relays: h.relays.iter().map(&mut next).collect(),
            })
            .collect();
        for relay in hops.iter().flat_map(|h| &h.relays) {
            if let Some((_, why)) = &relay.down {
                tracing::warn!(task_id, relay = %relay.name, reason = %why, "a zone-chain relay cannot take part; its zone's targets fetch from the others or direct");
            }
        }
        let relay_keys: HashSet<_> = hops
            .iter()
            .flat_map(|h| &h.relays)
            .filter_map(AgentSlot::usable)
            .collect();
        let mut state = TransferState::new(entries, runs);
        let mut effect = Effect::default();
        for plan in &tasks {
            close_unusable(&mut state, plan, &mut effect);
        }
        let timeout = self.config.timeout_for(spec.timeout_seconds);
        let transfer = LiveTransfer {
            id: task_id.to_string(),
            created_ms: gse_core::now_ms(),
            token: rand::random::<[u8; 16]>().to_vec(),
            timeout,
            deadline: Instant::now() + timeout,
            auto_mkdir: spec.auto_mkdir,
            upload_bps: spec.upload_speed.saturating_mul(BYTES_PER_MB),
            download_bps: spec.download_speed.saturating_mul(BYTES_PER_MB),
            tasks,
            hops,
            pass_through: spec.pass_through.clone(),
            relay_keys,
            state: parking_lot::Mutex::new(state),
        };
        (transfer, effect)
    }

    /// An agent as named, resolved, and whether it can take part.
    fn slot(&self, a: &AgentSpec, record: Option<AgentRecord>, located: &Locations) -> AgentSlot {
        let name = &a.bk_agent_id;
        let down = if !a.bk_container_id.is_empty() {
            Some((
                ERR_TRANSFER_FAILED,
                format!(
                    "bk_container_id {:?}: transfers in containers are not supported yet; name the host agent {name}",
                    a.bk_container_id
                ),
            ))
        } else {
            match &record {
                None => Some((ERR_AGENT_DOWN, unknown_agent(name))),
                Some(rec) => match located.get(&rec.key) {
                    // Fail now what no send could reach (another node's
                    // agent without a node link), not when the manifest is in.
                    Some(Ok(at)) => match self.sender.reachable(at) {
                        Ok(()) => None,
                        Err(why) => Some((ERR_AGENT_DOWN, why.for_host(name))),
                    },
                    Some(Err(why)) => Some((ERR_AGENT_DOWN, why.for_host(name))),
                    None => Some((ERR_AGENT_DOWN, SendError::Offline(rec.key).for_host(name))),
                },
            }
        };
        AgentSlot {
            name: name.clone(),
            container: a.bk_container_id.clone(),
            key: record.as_ref().map(|r| r.key),
            real_id: record
                .as_ref()
                .map(|r| r.agent_id.clone())
                .unwrap_or_default(),
            p2p_addr: record.as_ref().and_then(|r| r.p2p_addr.parse().ok()),
            zone: record.map(|r| r.zone).unwrap_or_default(),
            down,
        }
    }

    /// Where each of `keys` is held now (each agent asked once, all in one
    /// directory round trip).
    pub(super) async fn locate_all(&self, mut keys: Vec<gse_core::AgentKey>) -> Locations {
        keys.sort_unstable();
        keys.dedup();
        let found = self.sender.locate_many(&keys).await;
        keys.into_iter().zip(found).collect()
    }

    /// Sends every task that can start its `FileManifestRequest`; a send
    /// that fails ends the task with 117 (one to an agent moving to
    /// another node follows it there). Returns how many were sent.
    fn request_manifests(&self, t: &Arc<LiveTransfer>, located: &Locations) -> usize {
        let mut asked = 0;
        for (i, plan) in t.tasks.iter().enumerate() {
            let Some(key) = plan.source.usable() else {
                continue;
            };
            let Some(Ok(at)) = located.get(&key) else {
                continue;
            };
            let frame = self.manifest_request(t, i);
            self.change(t, Some("failed"), |st, effect| {
                if st.runs[i].phase != Phase::Manifest {
                    return;
                }
                let request = (i, key, Request::Manifest);
                if self.send_request(t, request, at, frame, st, effect) {
                    asked += 1;
                }
            });
        }
        asked
    }

    /// Starts the tasks whose file this node sends itself: their manifest
    /// is made already.
    fn push_contents(&self, t: &Arc<LiveTransfer>) {
        for (task, plan) in t.tasks.iter().enumerate() {
            if let Some(file) = &plan.content {
                self.manifest_in(t.clone(), task, vec![file.entry.clone()]);
            }
        }
    }

    /// Task `task`'s `FileManifestRequest`, for its source.
    pub(super) fn manifest_request(&self, t: &LiveTransfer, task: usize) -> Frame {
        let plan = &t.tasks[task];
        Frame::new(
            MsgType::FileManifestRequest,
            0,
            &FileManifestRequest {
                transfer_id: t.id.clone(),
                task_index: task as u32,
                source_dir: plan.selection.source_dir.clone(),
                selection: plan.selection.kind as i32,
                pattern: plan.selection.pattern.clone(),
                upload_bytes_per_s: t.upload_bps,
                timeout_ms: remaining_ms(t),
                token: t.token.clone(),
                user: plan.source_user.clone(),
            },
        )
    }
}

/// Milliseconds left before the transfer's deadline (at least 1).
pub(super) fn remaining_ms(t: &LiveTransfer) -> u64 {
    let left = t.deadline.saturating_duration_since(Instant::now());
    (left.as_millis() as u64).max(1)
}

/// Every agent the transfer names, in the order [`FileService::build`]
/// takes them: per task its source then its targets, then the relays.
fn agent_refs(spec: &TransferSpec) -> Vec<AgentRef> {
    let tasks = spec
        .tasks
        .iter()
        .flat_map(|t| t.source.agent().into_iter().chain(&t.targets));
    let relays = spec.zone_chain.iter().flat_map(|h| &h.relays);
    tasks.chain(relays).map(|a| a.agent.clone()).collect()
}

fn plan_task(
    task: &FileTaskSpec,
    source: AgentSlot,
    targets: Vec<AgentSlot>,
    upload: u32,
) -> TaskPlan {
    let mut by_key: HashMap<_, Vec<u32>> = HashMap::new();
    for (t, slot) in targets.iter().enumerate() {
        if let Some(key) = slot.usable() {
            by_key.entry(key).or_default().push(t as u32);
        }
    }
    let owners = task
        .targets
        .iter()
        .map(|a| match task.target.owner.as_str() {
            "" => a.user.clone(),
            owner => owner.to_string(),
        })
        .collect();
    let mut target = task.target.clone();
    if task.source.kind != FileKind::File {
        // Trees and patterns keep their own names.
        target.file_name.clear();
    }
    TaskPlan {
        source,
        source_dir: task.source.store_dir.clone(),
        source_name: task.source.file_name.clone(),
        source_user: task
            .source
            .agent()
            .map(|a| a.user.clone())
            .unwrap_or_default(),
        selection: task.source.selection(),
        target,
        targets,
        owners,
        upload,
        by_key,
        content: match &task.source.from {
            SourceFrom::Content(bytes) => {
                Some(Arc::new(pushed_file(&task.source.file_name, bytes)))
            }
            SourceFrom::Agent(_) => None,
        },
    }
}

/// The manifest entry of a file this node pushes: one regular file named
/// `name`, hashed as an agent hashes the files it sends.
fn pushed_file(name: &str, bytes: &bytes::Bytes) -> PushedFile {
    use gse_core::file_digest::{digest_reader, piece_size_for};
    let size = bytes.len() as u64;
    let d = digest_reader(&bytes[..], size, piece_size_for(size))
        .expect("reading bytes in memory cannot fail");
    let entry = FileEntry {
        path: name.to_string(),
        mode: super::spec::DEFAULT_PUSH_MODE,
        r#type: EntryType::EntryFile as i32,
        size: d.size,
        piece_size: d.piece_size,
        piece_hashes: d.pieces.iter().flat_map(|h| h.0).collect(),
        blake3: d.blake3.0.to_vec(),
        md5_hex: d.md5,
        link_target: String::new(),
    };
    PushedFile {
        bytes: bytes.clone(),
        entry,
    }
}

/// The task's upload entry and one download entry per target, waiting.
fn first_entries(task: u32, plan: &TaskPlan) -> Vec<FileEntryRecord> {
    let upload = FileEntryRecord {
        mode: 0,
        task_index: task,
        source_agent_id: plan.source.name.clone(),
        source_container_id: plan.source.container.clone(),
        source_file_dir: plan.source_dir.clone(),
        source_file_name: plan.source_name.clone(),
        agent_key: plan.source.key.map(|k| k.to_string()).unwrap_or_default(),
        agent_real_id: plan.source.real_id.clone(),
        status: STATUS_WAITING,
        status_info: "waiting to ask the source for its manifest".into(),
        error_code: ERR_RUNNING,
        ..FileEntryRecord::default()
    };
    let dest_name = match plan.target.file_name.as_str() {
        "" => plan.source_name.clone(),
        name => name.to_string(),
    };
    let downloads = plan.targets.iter().map(|slot| FileEntryRecord {
        mode: 1,
        dest_agent_id: slot.name.clone(),
        dest_container_id: slot.container.clone(),
        dest_file_dir: plan.target.store_dir.clone(),
        dest_file_name: dest_name.clone(),
        agent_key: slot.key.map(|k| k.to_string()).unwrap_or_default(),
        agent_real_id: slot.real_id.clone(),
        status_info: "waiting for the source's manifest".into(),
        ..upload.clone()
    });
    std::iter::once(upload.clone()).chain(downloads).collect()
}

/// Closes what cannot take part: the whole task when its source cannot
/// (117, or 701 for a container), else each unusable target.
fn close_unusable(st: &mut TransferState, plan: &TaskPlan, effect: &mut Effect) {
    if let Some((code, why)) = &plan.source.down {
        fail_task(st, plan, *code, why, effect);
        return;
    }
    for (t, slot) in plan.targets.iter().enumerate() {
        if let Some((code, why)) = &slot.down {
            st.close(
                plan.download(t as u32),
                Outcome::failed(*code, why.clone()),
                effect,
            );
        }
    }
}

/// Fails a task's upload and every open download with one code: the
/// source could not (or can no longer) give them anything.
pub(super) fn fail_task(
    st: &mut TransferState,
    plan: &TaskPlan,
    code: i32,
    why: &str,
    effect: &mut Effect,
) {
    st.close(plan.upload, Outcome::failed(code, why), effect);
    let msg = format!("the source {} cannot send: {why}", plan.source.name);
    for t in 0..plan.targets.len() as u32 {
        st.close(plan.download(t), Outcome::failed(code, msg.clone()), effect);
    }
}

// === impl TaskRun ===

impl TaskRun {
    pub(super) fn new(upload: u32, downloads: u32) -> Self {
        TaskRun {
            phase: Phase::Manifest,
            upload,
            downloads,
            open_downloads: downloads,
            progress_sum: 0,
            manifest_ok: false,
            shapes: Vec::new(),
            source_conn: None,
            sent_on: HashMap::new(),
            relays: HashSet::new(),
            peers: HashMap::new(),
            heard: HashSet::new(),
            start: None,
        }
    }
}

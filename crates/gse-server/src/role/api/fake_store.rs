//! The API tests' in-memory store: agents, apps and tasks as the API reads
//! them, with faults (`list_agents` hanging or failing) to test timeouts
//! and store failures. The concerns the API never reads here (transfers,
//! routes, pins, alarms) refuse every call, so a test that reaches one by
//! mistake fails loudly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gse_core::identity::{AgentKey, AgentRef};
use gse_core::seams::state_store::{
    ChannelRecord, EntryFailure, FileTransferRecord, IdentityPin, KnownAgent, LogWindow, NewId,
    PinClaim, StoredTask, StreamToRecord, TaskEntryState, TaskRecord, TaskWrites,
};
use gse_core::seams::{
    AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, LostAlarm, LostAlarmStore,
    PinStore, RouteStore, StoreError, StoreKind, TaskStore, TransferStore,
};

#[derive(Default)]
pub(in crate::role::api) struct FakeStore {
    pub(in crate::role::api) agents: Mutex<HashMap<AgentKey, AgentRecord>>,
    apps: Mutex<HashMap<String, AppRecord>>,
    tasks: Mutex<HashMap<String, FakeTask>>,
    /// How `list_agents` misbehaves, to test timeouts and store failures.
    list_fault: Option<Fault>,
}

impl FakeStore {
    pub(super) fn with_list_fault(list_fault: Option<Fault>) -> Self {
        FakeStore {
            list_fault,
            ..FakeStore::default()
        }
    }
}

/// A task as the fake store keeps it.
struct FakeTask {
    record: TaskRecord,
    entries: BTreeMap<(u32, u32), TaskEntryState>,
    logs: HashMap<(u32, u32), Vec<u8>>,
}

#[derive(Clone, Copy)]
pub(super) enum Fault {
    Hang,
    Fail,
    Down,
}

impl StoreKind for FakeStore {
    fn kind(&self) -> &'static str {
        "fake"
    }
}

#[async_trait]
impl AgentStore for FakeStore {
    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError> {
        self.agents.lock().unwrap().insert(record.key, record);
        Ok(())
    }
    async fn record_heartbeats(&self, _beats: &[HeartbeatUpdate]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn mark_offline(
        &self,
        _key: AgentKey,
        _node_id: &str,
        _connected_at_ms: u64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn mark_node_offline(&self, node_id: &str) -> Result<Vec<AgentKey>, StoreError> {
        let mut keys = Vec::new();
        for rec in self.agents.lock().unwrap().values_mut() {
            if rec.alive && rec.node_id == node_id {
                rec.alive = false;
                keys.push(rec.key);
            }
        }
        keys.sort();
        Ok(keys)
    }
    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        let agents = self.agents.lock().unwrap();
        let find = |r: &AgentRef| match r {
            AgentRef::Key(k) => agents.get(k).cloned(),
            AgentRef::Id(id) => agents.values().find(|a| &a.agent_id == id).cloned(),
        };
        Ok(refs.iter().map(find).collect())
    }
    async fn identify_agents(
        &self,
        refs: &[AgentRef],
    ) -> Result<Vec<Option<KnownAgent>>, StoreError> {
        let found = self.get_agents(refs).await?;
        Ok(found
            .iter()
            .map(|r| r.as_ref().map(KnownAgent::from))
            .collect())
    }
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        match self.list_fault {
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Fail) => Err(StoreError::corrupt(
                "fake",
                "listing agents",
                "disk on fire",
            )),
            Some(Fault::Down) => Err(StoreError::unavailable(
                "fake",
                "listing agents",
                "connection refused",
            )),
            None => Ok(self.agents.lock().unwrap().values().cloned().collect()),
        }
    }
}

#[async_trait]
impl AppStore for FakeStore {
    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.apps.lock().unwrap().get(app_code).cloned())
    }
    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError> {
        self.apps.lock().unwrap().insert(app.app_code.clone(), app);
        Ok(())
    }
}

#[async_trait]
impl TaskStore for FakeStore {
    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError> {
        let mut tasks = self.tasks.lock().unwrap();
        for record in &writes.tasks {
            tasks
                .entry(record.task_id.clone())
                .or_insert_with(|| FakeTask {
                    record: record.clone(),
                    entries: BTreeMap::new(),
                    logs: HashMap::new(),
                });
        }
        for e in &writes.entries {
            if let Some(t) = tasks.get_mut(&e.task_id) {
                t.entries.insert((e.target, e.atomic_id), e.clone());
            }
        }
        for chunk in &writes.logs {
            if let Some(t) = tasks.get_mut(&chunk.task_id) {
                let log = t.logs.entry((chunk.target, chunk.atomic_id)).or_default();
                if log.len() as u64 == chunk.offset {
                    log.extend_from_slice(chunk.data.as_bytes());
                }
            }
        }
        Ok(())
    }
    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        Ok(self.tasks.lock().unwrap().get(task_id).map(|t| StoredTask {
            record: t.record.clone(),
            entries: t.entries.values().cloned().collect(),
        }))
    }
    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let tasks = self.tasks.lock().unwrap();
        let log = |w: &LogWindow| -> Vec<u8> {
            let Some(log) = tasks
                .get(task_id)
                .and_then(|t| t.logs.get(&(w.target, w.atomic_id)))
            else {
                return Vec::new();
            };
            let from = (w.offset as usize).min(log.len());
            let to = from.saturating_add(w.max_bytes as usize).min(log.len());
            log[from..to].to_vec()
        };
        Ok(windows.iter().map(log).collect())
    }
    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let mut closed = 0;
        for t in self.tasks.lock().unwrap().values_mut() {
            if t.record.node_id != node_id {
                continue;
            }
            for e in t.entries.values_mut() {
                if !gse_core::task::is_final(e.status, e.error_code) {
                    e.status = failure.status;
                    e.error_code = failure.error_code;
                    e.error_msg = failure.error_msg.clone();
                    e.end_ms = failure.end_ms;
                    closed += 1;
                }
            }
        }
        Ok(closed)
    }
    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        let mut tasks = self.tasks.lock().unwrap();
        let before = tasks.len();
        tasks.retain(|_, t| t.record.created_ms >= created_before_ms);
        Ok((before - tasks.len()) as u64)
    }
}

/// The refusal of a concern the fake does not keep.
fn not_kept(doing: &'static str) -> StoreError {
    StoreError::internal(
        "fake",
        doing,
        "the API tests' fake store does not keep this",
    )
}

#[async_trait]
impl TransferStore for FakeStore {
    async fn write_file_transfers(
        &self,
        _: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        Err(not_kept("saving file transfers"))
    }
    async fn get_file_transfer(&self, _: &str) -> Result<Option<FileTransferRecord>, StoreError> {
        Err(not_kept("reading a file transfer"))
    }
    async fn fail_unfinished_file_transfers(
        &self,
        _: &str,
        _: EntryFailure,
    ) -> Result<u64, StoreError> {
        Err(not_kept("closing unfinished file transfers"))
    }
    async fn prune_file_transfers(&self, _: u64) -> Result<u64, StoreError> {
        Err(not_kept("pruning file transfers"))
    }
}

#[async_trait]
impl RouteStore for FakeStore {
    async fn insert_stream_to(
        &self,
        _: StreamToRecord,
        _: NewId,
    ) -> Result<Option<u32>, StoreError> {
        Err(not_kept("adding a stream_to"))
    }
    async fn replace_stream_to(&self, _: StreamToRecord) -> Result<bool, StoreError> {
        Err(not_kept("updating a stream_to"))
    }
    async fn delete_stream_to(&self, _: u32) -> Result<bool, StoreError> {
        Err(not_kept("deleting a stream_to"))
    }
    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        Err(not_kept("listing stream_tos"))
    }
    async fn insert_channel(&self, _: ChannelRecord, _: NewId) -> Result<Option<u32>, StoreError> {
        Err(not_kept("adding a data channel"))
    }
    async fn replace_channel(&self, _: ChannelRecord) -> Result<bool, StoreError> {
        Err(not_kept("updating a data channel"))
    }
    async fn delete_channel(&self, _: u32) -> Result<bool, StoreError> {
        Err(not_kept("deleting a data channel"))
    }
    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        Err(not_kept("listing data channels"))
    }
}

#[async_trait]
impl PinStore for FakeStore {
    async fn claim_identity(&self, _: IdentityPin) -> Result<PinClaim, StoreError> {
        Err(not_kept("claiming an identity"))
    }
    async fn repin_identity(&self, _: IdentityPin) -> Result<(), StoreError> {
        Err(not_kept("re-pinning an identity"))
    }
    async fn release_identity(&self, _: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        Err(not_kept("releasing an identity pin"))
    }
    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        Err(not_kept("listing identity pins"))
    }
}

#[async_trait]
impl LostAlarmStore for FakeStore {
    async fn put_lost_alarm(&self, _: LostAlarm) -> Result<(), StoreError> {
        Err(not_kept("saving a raised agent_lost alarm"))
    }
    async fn clear_lost_alarm(&self, _: AgentKey, _: &str) -> Result<(), StoreError> {
        Err(not_kept("clearing a raised agent_lost alarm"))
    }
    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        Err(not_kept("listing raised agent_lost alarms"))
    }
}

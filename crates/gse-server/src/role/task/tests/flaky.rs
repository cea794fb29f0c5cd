//! [`FlakyStore`]: the embedded store, but writes of task records and of
//! file transfers fail while `fail_writes` > 0 (counting down), as a full
//! or broken disk would. Every other call goes to the inner store unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use gse_core::seams::state_store::{
    ChannelRecord, EntryFailure, FileTransferRecord, IdentityPin, KnownAgent, LogWindow, NewId,
    PinClaim, StoredTask, StreamToRecord, TaskWrites,
};
use gse_core::seams::{
    AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, LostAlarm, LostAlarmStore,
    PinStore, RouteStore, StateStore, StoreError, StoreKind, TaskStore, TransferStore,
};
use gse_core::{AgentKey, AgentRef};

pub(crate) struct FlakyStore {
    /// Shared by task and file-transfer writes.
    pub inner: Arc<dyn StateStore>,
    pub fail_writes: std::sync::atomic::AtomicUsize,
}

impl StoreKind for FlakyStore {
    fn kind(&self) -> &'static str {
        "flaky"
    }
}

impl FlakyStore {
    /// Fails this write if failures are left (using one up).
    fn refuse(&self, doing: &'static str) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        match self
            .fail_writes
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(StoreError::unavailable("flaky", doing, "disk full")),
            Err(_) => Ok(()),
        }
    }
}

#[async_trait]
impl TaskStore for FlakyStore {
    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError> {
        self.refuse("saving task records")?;
        self.inner.write_tasks(writes).await
    }
    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        self.inner.get_task(task_id).await
    }
    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.read_task_logs(task_id, windows).await
    }
    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        self.inner.fail_unfinished_tasks(node_id, failure).await
    }
    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.inner.prune_tasks(created_before_ms).await
    }
}

#[async_trait]
impl AgentStore for FlakyStore {
    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError> {
        self.inner.upsert_agent(record).await
    }
    async fn record_heartbeats(&self, beats: &[HeartbeatUpdate]) -> Result<(), StoreError> {
        self.inner.record_heartbeats(beats).await
    }
    async fn mark_offline(
        &self,
        key: AgentKey,
        node_id: &str,
        connected_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.inner.mark_offline(key, node_id, connected_at_ms).await
    }
    async fn mark_node_offline(&self, node_id: &str) -> Result<Vec<AgentKey>, StoreError> {
        self.inner.mark_node_offline(node_id).await
    }
    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        self.inner.get_agents(refs).await
    }
    async fn identify_agents(
        &self,
        refs: &[AgentRef],
    ) -> Result<Vec<Option<KnownAgent>>, StoreError> {
        self.inner.identify_agents(refs).await
    }
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.inner.list_agents().await
    }
}

#[async_trait]
impl AppStore for FlakyStore {
    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError> {
        self.inner.get_app(app_code).await
    }
    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError> {
        self.inner.put_app(app).await
    }
}

#[async_trait]
impl TransferStore for FlakyStore {
    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        self.refuse("saving file transfers")?;
        self.inner.write_file_transfers(transfers).await
    }
    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError> {
        self.inner.get_file_transfer(task_id).await
    }
    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        self.inner
            .fail_unfinished_file_transfers(node_id, failure)
            .await
    }
    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.inner.prune_file_transfers(created_before_ms).await
    }
}

#[async_trait]
impl RouteStore for FlakyStore {
    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.inner.insert_stream_to(record, id).await
    }
    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError> {
        self.inner.replace_stream_to(record).await
    }
    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError> {
        self.inner.delete_stream_to(stream_to_id).await
    }
    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        self.inner.list_stream_tos().await
    }
    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.inner.insert_channel(record, id).await
    }
    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError> {
        self.inner.replace_channel(record).await
    }
    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError> {
        self.inner.delete_channel(channel_id).await
    }
    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        self.inner.list_channels().await
    }
}

#[async_trait]
impl PinStore for FlakyStore {
    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError> {
        self.inner.claim_identity(pin).await
    }
    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError> {
        self.inner.repin_identity(pin).await
    }
    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        self.inner.release_identity(key).await
    }
    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        self.inner.list_identity_pins().await
    }
}

#[async_trait]
impl LostAlarmStore for FlakyStore {
    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError> {
        self.inner.put_lost_alarm(alarm).await
    }
    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError> {
        self.inner.clear_lost_alarm(key, node_id).await
    }
    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        self.inner.list_lost_alarms().await
    }
}

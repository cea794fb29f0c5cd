//! Data routes (D5): [`StreamToRecord`]s and [`ChannelRecord`]s, each an
//! id, a platform and the data role's own JSON document; new ids are picked
//! by the store ([`NewId`]) so that concurrent adds never share one.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A data receiver (`stream_to`, D5) as stored: its id and platform, and the
/// data role's own JSON document (the store never reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamToRecord {
    pub stream_to_id: u32,
    pub plat_name: String,
    /// JSON owned by the data role (`role::data::routes` in gse-server).
    pub spec: String,
}

/// A data channel (one data id and its routes, D5) as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The data id.
    pub channel_id: u32,
    pub plat_name: String,
    /// JSON owned by the data role (`role::data::routes` in gse-server).
    pub spec: String,
}

/// Which id a new record gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewId {
    /// Exactly this one; refused if it is taken.
    Given(u32),
    /// One more than the largest id in `first..=last` (or `first`); once
    /// `last` is taken, the lowest free id of the range; refused when the
    /// range is full.
    Next { first: u32, last: u32 },
}

#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Stores a new stream_to under the id `id` picks (the record's own
    /// `stream_to_id` is ignored); `None` when that id is taken or the
    /// range is full.
    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError>;
    /// Replaces a stored stream_to; `false` if there is none with its id.
    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError>;
    /// Deletes a stream_to; `false` if there was none.
    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError>;
    /// Every stored stream_to, by id.
    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError>;
    /// Stores a new channel under the id `id` picks (the record's own
    /// `channel_id` is ignored); `None` when that id is taken or the range
    /// is full.
    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError>;
    /// Replaces a stored channel; `false` if there is none with its id.
    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError>;
    /// Deletes a channel; `false` if there was none.
    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError>;
    /// Every stored channel, by id.
    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError>;
}

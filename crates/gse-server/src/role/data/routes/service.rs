//! [`RouteService`]: the one owner of data routes. It keeps every stream_to
//! and channel in memory, writes each change to the StateStore before
//! applying it, and after every change rebuilds the live [`RouteTable`]
//! (so a change applies at once, without a restart).
//!
//! Ids: `add_streamto` gives the next free id from [`FIRST_STREAM_TO_ID`]
//! (500, the id bk-monitor looks for as its default cluster, goes to the
//! first stream_to added); `add_route` without a channel id gives the next
//! free one from [`FIRST_ALLOCATED_CHANNEL_ID`], above the built-in data ids
//! of bk-monitor and bk-cmdb (1000-1100xxx), which callers register by id.
//!
//! Each node loads the routes at start and applies its own API's changes;
//! with a store shared between nodes (the cluster work), changes made
//! through another node are seen here after [`RouteService::reload`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::state_store::{ChannelRecord, NewId, StreamToRecord};
use gse_core::seams::{StateStore, StoreError};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::error::RouteError;
use super::model::{Channel, Route, StreamFilter, StreamTo};
use super::table::{RouteTable, SinkCache};
use super::validate::{self, MAX_CHANNEL_ID, MAX_FILTERS, MAX_ROUTES, StreamToSpec};
use crate::role::data::sink::{SinkContext, file};

/// The first stream_to id handed out.
pub const FIRST_STREAM_TO_ID: u32 = 500;
/// The first channel id (data id) handed out by `add_route` without one
/// (0x180000).
pub const FIRST_ALLOCATED_CHANNEL_ID: u32 = 1_572_864;
/// Most stream_tos this server keeps.
pub const MAX_STREAM_TOS: usize = 10_000;
/// Most channels this server keeps.
pub const MAX_CHANNELS: usize = 100_000;

type Result<T> = std::result::Result<T, RouteError>;

/// A channel as `add_route` asks for it.
#[derive(Clone, Debug)]
pub struct NewChannel {
    pub plat_name: String,
    pub label: Option<Value>,
    /// `None` = allocate one.
    pub channel_id: Option<u32>,
    pub routes: Vec<Route>,
    pub stream_filters: Vec<StreamFilter>,
}

/// Owns data routes; see the module doc.
pub struct RouteService {
    store: Arc<dyn StateStore>,
    sinks: SinkContext,
    table: RouteTable,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stream_tos: BTreeMap<u32, StreamTo>,
    channels: BTreeMap<u32, Channel>,
    cache: SinkCache,
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("route documents always serialise")
}

/// Whether a stored label has every key of the asked one. Only two objects
/// are compared: a record stored without a label matches any asked one, so
/// a caller that adds a label to its queries still finds what it stored.
fn label_matches(stored: Option<&Value>, asked: Option<&Value>) -> bool {
    match (asked, stored) {
        (Some(Value::Object(a)), Some(Value::Object(s))) => {
            a.iter().all(|(k, v)| s.get(k) == Some(v))
        }
        _ => true,
    }
}

// === impl RouteService ===

impl RouteService {
    /// Loads every stored stream_to and channel and builds the table.
    pub async fn start(store: Arc<dyn StateStore>, sinks: SinkContext) -> Result<Arc<Self>> {
        let svc = Arc::new(RouteService {
            store,
            sinks,
            table: RouteTable::default(),
            state: Mutex::new(State::default()),
        });
        svc.reload().await?;
        Ok(svc)
    }

    /// The live table the data path reads.
    pub fn table(&self) -> RouteTable {
        self.table.clone()
    }

    /// Reads everything from the store again and rebuilds the table.
    pub async fn reload(&self) -> Result<()> {
        let stream_tos = self.store.list_stream_tos().await?;
        let channels = self.store.list_channels().await?;
        self.apply(stream_tos, channels).await;
        Ok(())
    }

    /// Follows the routes other nodes change, until `shutdown` (in a
    /// cluster, where any node's API writes the shared store): every
    /// `every`, the stored routes are read and, when they differ from what
    /// the table was last built from, applied, so a route added through
    /// any node carries data on this node's DataServers within seconds,
    /// without a restart. Reading whole tables (a few hundred records at
    /// most) keeps no feed state that a Redis restart could lose. A store
    /// that cannot be read keeps the table as it is.
    pub async fn follow(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut last: Option<(Vec<StreamToRecord>, Vec<ChannelRecord>)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let read = async {
                let stream_tos = self.store.list_stream_tos().await?;
                let channels = self.store.list_channels().await?;
                Ok::<_, StoreError>((stream_tos, channels))
            };
            let now = match read.await {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the data routes to follow other nodes' changes; keeping the current table");
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            if last.is_some() {
                tracing::info!("data routes changed in the store; applying");
            }
            self.apply(now.0.clone(), now.1.clone()).await;
            last = Some(now);
        }
    }

    /// Builds the table from stored records.
    async fn apply(&self, stream_tos: Vec<StreamToRecord>, channels: Vec<ChannelRecord>) {
        let mut state = self.state.lock().await;
        state.stream_tos = stream_tos
            .into_iter()
            .filter_map(|r| match serde_json::from_str::<StreamTo>(&r.spec) {
                Ok(mut s) => {
                    s.stream_to_id = r.stream_to_id;
                    Some((r.stream_to_id, s))
                }
                Err(e) => {
                    tracing::error!(stream_to_id = r.stream_to_id, error = %e, "skipping an unreadable stored stream_to");
                    None
                }
            })
            .collect();
        state.channels = channels
            .into_iter()
            .filter_map(|r| match serde_json::from_str::<Channel>(&r.spec) {
                Ok(mut c) => {
                    c.channel_id = r.channel_id;
                    Some((r.channel_id, c))
                }
                Err(e) => {
                    tracing::error!(channel_id = r.channel_id, error = %e, "skipping an unreadable stored channel");
                    None
                }
            })
            .collect();
        self.rebuild(&mut state);
    }

    fn rebuild(&self, state: &mut State) {
        let State {
            stream_tos,
            channels,
            cache,
        } = state;
        let map = cache.build(&self.sinks, stream_tos, channels);
        self.table.swap(map);
        super::metrics::table_built(self.table.len(), cache.len());
        tracing::info!(
            channels = channels.len(),
            routed = self.table.len(),
            sinks = cache.len(),
            "data route table rebuilt"
        );
    }

    // --- stream_to ---

    fn check_stream_to(&self, spec: &StreamToSpec) -> Result<()> {
        if spec.report_mode == super::model::ReportMode::File {
            let path = spec.body["data_log_path"].as_str().unwrap_or_default();
            file::resolve_dir(&self.sinks.data_dir, path)
                .map_err(|p| RouteError::invalid("stream_to.data_log_path", p))?;
        }
        Ok(())
    }

    /// `add_streamto`: stores it under a new id and returns the id.
    pub async fn add_stream_to(
        &self,
        plat_name: String,
        label: Option<Value>,
        spec: StreamToSpec,
    ) -> Result<u32> {
        self.check_stream_to(&spec)?;
        let mut state = self.state.lock().await;
        if state.stream_tos.len() >= MAX_STREAM_TOS {
            return Err(RouteError::TooManyStored {
                what: "stream_tos",
                limit: MAX_STREAM_TOS,
            });
        }
        let mut st = StreamTo {
            stream_to_id: 0,
            plat_name,
            label,
            name: spec.name,
            report_mode: spec.report_mode,
            body: spec.body,
        };
        let record = StreamToRecord {
            stream_to_id: 0,
            plat_name: st.plat_name.clone(),
            spec: to_json(&st),
        };
        let next = NewId::Next {
            first: FIRST_STREAM_TO_ID,
            last: u32::MAX,
        };
        let id =
            self.store
                .insert_stream_to(record, next)
                .await?
                .ok_or(RouteError::IdsExhausted {
                    what: "stream_to",
                    first: FIRST_STREAM_TO_ID,
                    last: u32::MAX,
                })?;
        st.stream_to_id = id;
        tracing::info!(stream_to_id = id, name = %st.name, mode = st.report_mode.as_str(), "stream_to added");
        state.stream_tos.insert(id, st);
        Ok(id)
    }

    fn stream_to_of<'a>(state: &'a State, id: u32, plat_name: &str) -> Result<&'a StreamTo> {
        state
            .stream_tos
            .get(&id)
            .filter(|s| s.plat_name == plat_name)
            .ok_or_else(|| RouteError::StreamToNotFound {
                stream_to_id: id,
                plat_name: plat_name.to_string(),
            })
    }

    /// `update_streamto`: replaces its settings; the routes that use it
    /// get new sinks.
    pub async fn update_stream_to(
        &self,
        id: u32,
        plat_name: &str,
        spec: StreamToSpec,
    ) -> Result<()> {
        self.check_stream_to(&spec)?;
        let mut state = self.state.lock().await;
        let mut st = Self::stream_to_of(&state, id, plat_name)?.clone();
        st.name = spec.name;
        st.report_mode = spec.report_mode;
        st.body = spec.body;
        for channel in state.channels.values() {
            for (i, route) in channel.routes.iter().enumerate() {
                if route.stream_to_id == id {
                    let field = format!("channel {} route[{i}]", channel.channel_id);
                    validate::check_route(route, &st, &field)?;
                }
            }
        }
        let record = StreamToRecord {
            stream_to_id: id,
            plat_name: st.plat_name.clone(),
            spec: to_json(&st),
        };
        if !self.store.replace_stream_to(record).await? {
            return Err(RouteError::StreamToNotFound {
                stream_to_id: id,
                plat_name: plat_name.to_string(),
            });
        }
        tracing::info!(stream_to_id = id, "stream_to updated");
        state.stream_tos.insert(id, st);
        self.rebuild(&mut state);
        Ok(())
    }

    /// `delete_streamto`: refused while routes use it.
    pub async fn delete_stream_to(&self, id: u32, plat_name: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        Self::stream_to_of(&state, id, plat_name)?;
        let users: Vec<u32> = state
            .channels
            .values()
            .filter(|c| c.routes.iter().any(|r| r.stream_to_id == id))
            .map(|c| c.channel_id)
            .collect();
        if !users.is_empty() {
            return Err(RouteError::StreamToInUse {
                stream_to_id: id,
                channels: users,
            });
        }
        self.store.delete_stream_to(id).await?;
        state.stream_tos.remove(&id);
        tracing::info!(stream_to_id = id, "stream_to deleted");
        Ok(())
    }

    /// `query_streamto`: those of `plat_name`, optionally one id or label.
    pub async fn query_stream_tos(
        &self,
        plat_name: &str,
        id: Option<u32>,
        label: Option<&Value>,
    ) -> Vec<StreamTo> {
        let state = self.state.lock().await;
        state
            .stream_tos
            .values()
            .filter(|s| s.plat_name == plat_name)
            .filter(|s| id.is_none_or(|id| s.stream_to_id == id))
            .filter(|s| label_matches(s.label.as_ref(), label))
            .cloned()
            .collect()
    }

    // --- channels ---

    /// Checks a channel as it would be stored: its routes name existing
    /// stream_tos and carry their mode's section, its filters exist.
    fn check_channel(state: &State, channel: &Channel) -> Result<()> {
        if channel.routes.len() > MAX_ROUTES {
            return Err(RouteError::OverLimit {
                field: "route".into(),
                count: channel.routes.len(),
                limit: MAX_ROUTES,
            });
        }
        if channel.stream_filters.len() > MAX_FILTERS {
            return Err(RouteError::OverLimit {
                field: "stream_filters".into(),
                count: channel.stream_filters.len(),
                limit: MAX_FILTERS,
            });
        }
        for (i, route) in channel.routes.iter().enumerate() {
            let field = format!("route[{i}]");
            let st = state.stream_tos.get(&route.stream_to_id).ok_or_else(|| {
                RouteError::UnknownStreamTo {
                    field: format!("{field}.stream_to.stream_to_id"),
                    stream_to_id: route.stream_to_id,
                }
            })?;
            validate::check_route(route, st, &field)?;
            let names = route.filter_name_and.iter().chain(&route.filter_name_or);
            for name in names {
                if !channel.stream_filters.iter().any(|f| &f.name == name) {
                    return Err(RouteError::invalid(
                        format!("{field}.filter_name_and/or"),
                        format!("{name:?} is not one of the channel's stream_filters"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn channel_of<'a>(state: &'a State, id: u32, plat_name: Option<&str>) -> Result<&'a Channel> {
        state
            .channels
            .get(&id)
            .filter(|c| plat_name.is_none_or(|p| c.plat_name == p))
            .ok_or_else(|| RouteError::ChannelNotFound {
                channel_id: id,
                plat_name: plat_name.unwrap_or_default().to_string(),
            })
    }

    async fn save_channel(&self, state: &mut State, channel: Channel) -> Result<()> {
        let record = ChannelRecord {
            channel_id: channel.channel_id,
            plat_name: channel.plat_name.clone(),
            spec: to_json(&channel),
        };
        if !self.store.replace_channel(record).await? {
            return Err(RouteError::ChannelNotFound {
                channel_id: channel.channel_id,
                plat_name: channel.plat_name,
            });
        }
        state.channels.insert(channel.channel_id, channel);
        self.rebuild(state);
        Ok(())
    }

    /// `add_route`: registers a channel (allocating its id when none is
    /// given) and returns the id.
    pub async fn add_channel(&self, new: NewChannel) -> Result<u32> {
        let mut state = self.state.lock().await;
        if state.channels.len() >= MAX_CHANNELS {
            return Err(RouteError::TooManyStored {
                what: "channels",
                limit: MAX_CHANNELS,
            });
        }
        let mut channel = Channel {
            channel_id: new.channel_id.unwrap_or(0),
            plat_name: new.plat_name,
            label: new.label,
            version: 1,
            routes: new.routes,
            stream_filters: new.stream_filters,
        };
        Self::check_channel(&state, &channel)?;
        let id = match new.channel_id {
            Some(id) => NewId::Given(id),
            None => NewId::Next {
                first: FIRST_ALLOCATED_CHANNEL_ID,
                last: MAX_CHANNEL_ID,
            },
        };
        let record = ChannelRecord {
            channel_id: 0,
            plat_name: channel.plat_name.clone(),
            spec: to_json(&channel),
        };
        let Some(got) = self.store.insert_channel(record, id).await? else {
            return Err(match new.channel_id {
                Some(channel_id) => RouteError::ChannelExists { channel_id },
                None => RouteError::IdsExhausted {
                    what: "channel",
                    first: FIRST_ALLOCATED_CHANNEL_ID,
                    last: MAX_CHANNEL_ID,
                },
            });
        };
        channel.channel_id = got;
        tracing::info!(
            channel_id = got,
            routes = channel.routes.len(),
            "data channel added"
        );
        state.channels.insert(got, channel);
        self.rebuild(&mut state);
        Ok(got)
    }

    /// `update_route`: adds the given routes and filters, replacing those
    /// of the same name.
    pub async fn update_channel(
        &self,
        id: u32,
        plat_name: &str,
        routes: Vec<Route>,
        filters: Vec<StreamFilter>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut channel = Self::channel_of(&state, id, Some(plat_name))?.clone();
        channel.upsert_filters(filters);
        channel.upsert_routes(routes);
        channel.version += 1;
        Self::check_channel(&state, &channel)?;
        self.save_channel(&mut state, channel).await?;
        tracing::info!(channel_id = id, "data channel updated");
        Ok(())
    }

    /// `delete_route` with method `all`: the whole channel.
    pub async fn delete_channel(&self, id: u32, plat_name: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        Self::channel_of(&state, id, Some(plat_name))?;
        self.store.delete_channel(id).await?;
        state.channels.remove(&id);
        self.rebuild(&mut state);
        tracing::info!(channel_id = id, "data channel deleted");
        Ok(())
    }

    /// `delete_route` with method `specification`: the named routes and
    /// filters; names the channel does not have are ignored.
    pub async fn delete_from_channel(
        &self,
        id: u32,
        plat_name: &str,
        routes: &[String],
        filters: &[String],
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut channel = Self::channel_of(&state, id, Some(plat_name))?.clone();
        channel.routes.retain(|r| !routes.contains(&r.name));
        channel
            .stream_filters
            .retain(|f| !filters.contains(&f.name));
        channel.version += 1;
        Self::check_channel(&state, &channel)?;
        self.save_channel(&mut state, channel).await?;
        tracing::info!(channel_id = id, "routes deleted from a data channel");
        Ok(())
    }

    /// `query_route`: one channel by id, or every channel of `plat_name`;
    /// both filtered by plat_name and label when given.
    pub async fn query_channels(
        &self,
        id: Option<u32>,
        plat_name: Option<&str>,
        label: Option<&Value>,
    ) -> Vec<Channel> {
        let state = self.state.lock().await;
        state
            .channels
            .values()
            .filter(|c| id.is_none_or(|id| c.channel_id == id))
            .filter(|c| plat_name.is_none_or(|p| c.plat_name == p))
            .filter(|c| label_matches(c.label.as_ref(), label))
            .cloned()
            .collect()
    }
}

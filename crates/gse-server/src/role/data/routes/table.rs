//! The live route table: data id -> the sinks of its routes.
//!
//! Readers ([`RouteTable::targets`], once per batch on the data path) take
//! a read lock only long enough to clone an `Arc`; a change builds a whole
//! new map and swaps it in ([`RouteTable::swap`]), so a batch sees either
//! the old routes or the new ones, never a mix. Sinks are cached by
//! everything that shapes them ([`SinkCache`]): an unchanged route keeps
//! its sink (and its open file or connection) across rebuilds; a changed
//! stream_to or route gets a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gse_core::seams::Sink;
use parking_lot::RwLock;

use super::model::{Channel, Route, StreamTo};
use crate::role::data::sink::{self, BrokenSink, SinkContext};

/// One route of a data id, ready to write to.
#[derive(Clone)]
pub struct RouteTarget {
    /// The route's name.
    pub name: String,
    pub sink: Arc<dyn Sink>,
}

type Map = HashMap<u32, Arc<[RouteTarget]>>;

/// The data id -> targets map the data path reads; cheap to clone.
#[derive(Clone, Default)]
pub struct RouteTable {
    current: Arc<RwLock<Arc<Map>>>,
}

// === impl RouteTable ===

impl RouteTable {
    /// The targets of a data id; `None` when it has no route.
    pub fn targets(&self, data_id: u32) -> Option<Arc<[RouteTarget]>> {
        self.current.read().get(&data_id).cloned()
    }

    /// How many data ids have at least one route.
    pub fn len(&self) -> usize {
        self.current.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole table at once.
    pub(crate) fn swap(&self, map: Map) {
        *self.current.write() = Arc::new(map);
    }
}

/// Sinks made so far, by what shapes them.
#[derive(Default)]
pub struct SinkCache {
    sinks: HashMap<String, Arc<dyn Sink>>,
}

/// Everything a sink is made from: the stream_to as stored, the channel and
/// the route as sent.
fn cache_key(stream_to: &StreamTo, channel_id: u32, route: &Route) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        stream_to.stream_to_id, stream_to.body, channel_id, route.name, route.stream_to
    )
}

// === impl SinkCache ===

impl SinkCache {
    /// Builds the table for these channels, reusing cached sinks and
    /// dropping those no route uses any more. A sink that cannot be built
    /// is logged and replaced by a [`BrokenSink`].
    pub fn build(
        &mut self,
        ctx: &SinkContext,
        stream_tos: &BTreeMap<u32, StreamTo>,
        channels: &BTreeMap<u32, Channel>,
    ) -> Map {
        let mut next: HashMap<String, Arc<dyn Sink>> = HashMap::new();
        let mut map = Map::with_capacity(channels.len());
        for channel in channels.values() {
            let mut targets = Vec::with_capacity(channel.routes.len());
            for route in &channel.routes {
                let Some(stream_to) = stream_tos.get(&route.stream_to_id) else {
                    // The service refuses such routes; a store edited by
                    // hand could still have one.
                    tracing::error!(
                        channel_id = channel.channel_id,
                        route = %route.name,
                        stream_to_id = route.stream_to_id,
                        "route names a stream_to that does not exist; its records are not delivered"
                    );
                    continue;
                };
                let key = cache_key(stream_to, channel.channel_id, route);
                let sink = match self.sinks.get(&key).or_else(|| next.get(&key)) {
                    Some(s) => s.clone(),
                    None => make(ctx, stream_to, channel.channel_id, route),
                };
                next.insert(key, sink.clone());
                targets.push(RouteTarget {
                    name: route.name.clone(),
                    sink,
                });
            }
            if !targets.is_empty() {
                map.insert(channel.channel_id, targets.into());
            }
        }
        self.sinks = next;
        map
    }

    /// How many sinks are cached (for tests and logs).
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

fn make(ctx: &SinkContext, stream_to: &StreamTo, channel_id: u32, route: &Route) -> Arc<dyn Sink> {
    match sink::build(ctx, stream_to, channel_id, route) {
        Ok(sink) => sink,
        Err(e) => {
            tracing::error!(
                channel_id,
                route = %route.name,
                error = %e,
                "cannot make the sink of a route; its records are refused until the route is fixed"
            );
            Arc::new(BrokenSink::new(&stream_to.name, &e))
        }
    }
}

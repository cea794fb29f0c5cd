//! The data-route model (D5, COMPAT.md §2.3): stream_tos (where data goes)
//! and channels (a data id with its routes and stream filters).
//!
//! Callers compare what query_route returns with what they sent (bk-monitor
//! calls update_route only when they differ), so the parts they send are
//! kept as sent (`body`, `stream_to`) and returned verbatim; the typed
//! fields beside them are what the server itself reads.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::validate::Label;

/// `stream_to.report_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportMode {
    Kafka,
    Redis,
    Pulsar,
    File,
}

impl ReportMode {
    /// The wire name, also the key of the mode's section (`kafka:{...}`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReportMode::Kafka => "kafka",
            ReportMode::Redis => "redis",
            ReportMode::Pulsar => "pulsar",
            ReportMode::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<ReportMode> {
        [
            ReportMode::Kafka,
            ReportMode::Redis,
            ReportMode::Pulsar,
            ReportMode::File,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// A receiver routes send data to (`add_streamto`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamTo {
    pub stream_to_id: u32,
    pub plat_name: String,
    /// `metadata.label` as sent; absent = none.
    #[serde(default)]
    pub label: Option<Value>,
    pub name: String,
    pub report_mode: ReportMode,
    /// The `stream_to` object as sent (without any `stream_to_id`): what
    /// query_streamto returns and what sinks read their settings from.
    pub body: Value,
}

/// One route of a channel: records of the channel's data id go to a
/// stream_to, with the route's own settings (topic, channel name ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub stream_to_id: u32,
    /// The route's `stream_to` object as sent (`{stream_to_id, kafka:{...}}`).
    pub stream_to: Value,
    #[serde(default)]
    pub filter_name_and: Vec<String>,
    #[serde(default)]
    pub filter_name_or: Vec<String>,
}

/// A named stream filter of a channel, as sent. Stored and returned; see
/// docs/API.md for which are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamFilter {
    pub name: String,
    pub body: Value,
}

/// A data id with its routes (`add_route`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub channel_id: u32,
    pub plat_name: String,
    #[serde(default)]
    pub label: Option<Value>,
    /// 1 at creation, +1 on every change; query_route shows it as a string.
    pub version: u64,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub stream_filters: Vec<StreamFilter>,
}

/// One entry of query_streamto: the shape add_streamto takes, plus the id
/// (inside `stream_to` and beside it).
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamToEntry {
    pub stream_to_id: u32,
    pub metadata: StreamToMetadata,
    /// The stream_to as it was sent, with its `stream_to_id`.
    #[schema(value_type = Object)]
    pub stream_to: Value,
}

/// `metadata` of a query_streamto entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamToMetadata {
    pub plat_name: String,
    /// As sent (an object or a string); absent when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Label>)]
    pub label: Option<Value>,
}

/// One entry of query_route, in the shape bk-monitor-worker decodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelEntry {
    pub metadata: ChannelMetadata,
    pub route: Vec<RouteEntry>,
    /// The channel's stream filters as sent.
    #[schema(value_type = Vec<Object>)]
    pub stream_filters: Vec<Value>,
}

/// `metadata` of a query_route entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelMetadata {
    /// 1 at creation, +1 on every change, as a string.
    pub version: String,
    pub channel_id: u32,
    pub plat_name: String,
    /// As sent (an object or a string); `{}` when none was.
    #[schema(value_type = Label)]
    pub label: Value,
}

/// A route of a query_route entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteEntry {
    pub name: String,
    /// The route's stream_to as sent.
    #[schema(value_type = Object)]
    pub stream_to: Value,
    pub filter_name_and: Vec<String>,
    pub filter_name_or: Vec<String>,
}

// === impl StreamTo ===

impl StreamTo {
    /// One entry of query_streamto: the shape add_streamto takes, plus the
    /// id (inside `stream_to` and beside it).
    pub fn to_query(&self) -> StreamToEntry {
        let mut stream_to = self.body.clone();
        if let Some(obj) = stream_to.as_object_mut() {
            obj.insert("stream_to_id".into(), json!(self.stream_to_id));
        }
        StreamToEntry {
            stream_to_id: self.stream_to_id,
            metadata: StreamToMetadata {
                plat_name: self.plat_name.clone(),
                label: self.label.clone(),
            },
            stream_to,
        }
    }

    /// The mode's own section (`body.redis`, ...), if sent.
    pub fn section(&self) -> Option<&Value> {
        self.body.get(self.report_mode.as_str())
    }
}

// === impl Route ===

impl Route {
    pub fn to_query(&self) -> RouteEntry {
        RouteEntry {
            name: self.name.clone(),
            stream_to: self.stream_to.clone(),
            filter_name_and: self.filter_name_and.clone(),
            filter_name_or: self.filter_name_or.clone(),
        }
    }

    /// The route's section for a mode (`stream_to.redis`, ...), if sent.
    pub fn section(&self, mode: ReportMode) -> Option<&Value> {
        self.stream_to.get(mode.as_str())
    }
}

// === impl Channel ===

impl Channel {
    /// One entry of query_route, in the shape bk-monitor-worker decodes
    /// (`metadata.version` a string, `label` an object).
    pub fn to_query(&self) -> ChannelEntry {
        ChannelEntry {
            metadata: ChannelMetadata {
                version: self.version.to_string(),
                channel_id: self.channel_id,
                plat_name: self.plat_name.clone(),
                label: self.label.clone().unwrap_or_else(|| json!({})),
            },
            route: self.routes.iter().map(Route::to_query).collect(),
            stream_filters: self.stream_filters.iter().map(|f| f.body.clone()).collect(),
        }
    }

    /// Adds routes, replacing those of the same name (update_route).
    pub fn upsert_routes(&mut self, routes: Vec<Route>) {
        for route in routes {
            match self.routes.iter_mut().find(|r| r.name == route.name) {
                Some(old) => *old = route,
                None => self.routes.push(route),
            }
        }
    }

    /// Adds filters, replacing those of the same name (update_route).
    pub fn upsert_filters(&mut self, filters: Vec<StreamFilter>) {
        for filter in filters {
            match self
                .stream_filters
                .iter_mut()
                .find(|f| f.name == filter.name)
            {
                Some(old) => *old = filter,
                None => self.stream_filters.push(filter),
            }
        }
    }
}

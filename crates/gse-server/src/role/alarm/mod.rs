//! The alarm role (C7): raises alarms and delivers them to the alarm sinks.
//!
//! Start at [`AlarmService`]. The lost-connection alarm (K4) is raised once
//! per loss, also across a restart of this node (`lost.rs`): an agent not
//! back within `lost_grace` of its link dropping, or of the node
//! restarting, raises `agent_lost`; its return raises `agent_recovered`
//! (the clear). Other roles raise their own alarms through
//! [`AlarmService::raise`]: the task role raises `dangerous_operation` and
//! `dangerous_operation_blocked` (T6, T7, [`Alarm::about_task`]), the link
//! role `identity_conflict` and `data_dropped`. Delivery
//! (JSON-lines log, webhook) is in [`sinks`]; alarms are queued so that a
//! slow webhook never holds up the agent link.

mod config;
mod lost;
pub mod sinks;

use std::collections::HashMap;
use std::sync::Arc;

use gse_core::AgentKey;
use gse_core::seams::{AgentRecord, StateStore};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::AlarmConfig;

/// Alarms waiting for delivery; beyond this, new ones are dropped and counted.
const QUEUE_LEN: usize = 10_000;

/// What an alarm is about. The names are the `kind` field of the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// K4: an agent's heartbeat stopped.
    AgentLost,
    /// The clear of `AgentLost`: the agent is connected again.
    AgentRecovered,
    /// T6: a task matched an alarm-only dangerous-operation rule; it ran.
    DangerousOperation,
    /// T7: a task matched a blocking rule; nothing was dispatched.
    DangerousOperationBlocked,
    /// D2: a hosted plugin kept failing to restart; its agent gave up.
    PluginFailed,
    /// D5/C9: an agent dropped data (its spool was full, or a batch was
    /// lost).
    DataDropped,
    /// Issue 9: a registration claimed an identity that is pinned to
    /// another agent id, or not the one its certificate names; refused.
    IdentityConflict,
    /// Issue 13: an agent's watchdog restarted its worker (it crashed, or
    /// went over its memory or cpu budget).
    AgentRestarted,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::AgentLost => "agent_lost",
            AlarmKind::AgentRecovered => "agent_recovered",
            AlarmKind::DangerousOperation => "dangerous_operation",
            AlarmKind::DangerousOperationBlocked => "dangerous_operation_blocked",
            AlarmKind::PluginFailed => "plugin_failed",
            AlarmKind::DataDropped => "data_dropped",
            AlarmKind::IdentityConflict => "identity_conflict",
            AlarmKind::AgentRestarted => "agent_restarted",
        }
    }
}

/// One alarm, as written to every sink (one JSON object).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alarm {
    /// RFC 3339 UTC time it was raised.
    pub time: String,
    pub time_ms: u64,
    pub kind: AlarmKind,
    /// "warning" for raised alarms, "info" for clears.
    pub severity: &'static str,
    /// The node that raised it.
    pub node_id: String,
    /// `cloud:ip` of the agent concerned; for a task alarm, its one target
    /// as the caller named it, or empty when it has several.
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bk_cloud_id: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub bk_agent_id: String,
    /// Task alarms: the task, the dangerous-operation rule, and how many
    /// agents the task targets. Omitted from agent alarms.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub task_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_count: Option<usize>,
    /// Plugin alarms: the plugin, `namespace:name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub plugin: String,
    /// `agent_lost`: whether the host answered a probe (C11), so that an
    /// operator knows whether the host or only the agent is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_reachable: Option<bool>,
    /// `agent_lost`: the probe used ("icmp", "tcp:22", "icmp+tcp:22",
    /// "proxy P: icmp", "none (why)").
    #[serde(skip_serializing_if = "String::is_empty")]
    pub probe: String,
    pub message: String,
}

impl Alarm {
    /// An alarm raised now, about nothing in particular yet.
    fn now(kind: AlarmKind, node_id: &str, message: String) -> Self {
        let time_ms = gse_core::now_ms();
        Alarm {
            time: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms),
            )
            .to_string(),
            time_ms,
            kind,
            severity: if kind == AlarmKind::AgentRecovered {
                "info"
            } else {
                "warning"
            },
            node_id: node_id.to_string(),
            agent: String::new(),
            bk_cloud_id: None,
            ip: String::new(),
            bk_agent_id: String::new(),
            task_id: String::new(),
            rule: String::new(),
            agent_count: None,
            plugin: String::new(),
            host_reachable: None,
            probe: String::new(),
            message,
        }
    }

    fn about_agent(kind: AlarmKind, node_id: &str, rec: &AgentRecord, message: String) -> Self {
        Alarm {
            agent: rec.key.to_string(),
            bk_cloud_id: Some(rec.key.cloud_id),
            ip: rec.key.ip.to_string(),
            bk_agent_id: rec.agent_id.clone(),
            ..Alarm::now(kind, node_id, message)
        }
    }

    /// An alarm about an agent known by its key.
    pub fn about_agent_key(
        kind: AlarmKind,
        node_id: &str,
        agent: AgentKey,
        message: String,
    ) -> Self {
        Alarm {
            agent: agent.to_string(),
            bk_cloud_id: Some(agent.cloud_id),
            ip: agent.ip.to_string(),
            ..Alarm::now(kind, node_id, message)
        }
    }

    /// An alarm about a plugin (`namespace:name`) on an agent.
    pub fn about_plugin(
        kind: AlarmKind,
        node_id: &str,
        agent: AgentKey,
        plugin: &str,
        message: String,
    ) -> Self {
        Alarm {
            plugin: plugin.to_string(),
            ..Alarm::about_agent_key(kind, node_id, agent, message)
        }
    }

    /// An alarm about a task and the agents it targets (dangerous
    /// operations): `agents` as the caller named them, `rule` the rule that
    /// matched.
    pub fn about_task(
        kind: AlarmKind,
        node_id: &str,
        task_id: &str,
        agents: &[String],
        rule: &str,
        message: String,
    ) -> Self {
        Alarm {
            agent: match agents {
                [one] => one.clone(),
                _ => String::new(),
            },
            task_id: task_id.to_string(),
            rule: rule.to_string(),
            agent_count: Some(agents.len()),
            ..Alarm::now(kind, node_id, message)
        }
    }
}

/// Raises alarms and hands them to the delivery task.
pub struct AlarmService {
    node_id: String,
    config: AlarmConfig,
    tx: mpsc::Sender<Alarm>,
    /// Where raised `agent_lost` alarms are kept across restarts (`lost.rs`).
    store: Arc<dyn StateStore>,
    lost: Mutex<HashMap<AgentKey, lost::LostState>>,
    /// Serialises the writes of `lost` to the store (see `persist_lost`).
    persisting: tokio::sync::Mutex<()>,
    /// Probes a lost agent's host (C11); set once the link role is up.
    prober: std::sync::OnceLock<Arc<dyn HostProber>>,
    shutdown: CancellationToken,
}

/// Probes the host of a lost agent from where it can be reached: this
/// node, or the proxy of the agent's cloud area (the link role's).
#[async_trait::async_trait]
pub trait HostProber: Send + Sync {
    /// `via`: the proxies the agent was reached through, nearest this node
    /// first (empty: a direct agent, or not known).
    async fn probe(
        &self,
        agent: &AgentRecord,
        via: &[String],
        spec: gse_link::probe::ProbeSpec,
    ) -> gse_link::probe::Verdict;
}

impl AlarmService {
    /// Starts the delivery task; it drains the queue and stops on `shutdown`.
    pub fn start(
        config: AlarmConfig,
        node_id: String,
        store: Arc<dyn StateStore>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let delivery = sinks::Delivery::open(&config)?;
        tokio::spawn(delivery.run(rx));
        Ok(Arc::new(AlarmService {
            node_id,
            config,
            tx,
            store,
            lost: Mutex::new(HashMap::new()),
            persisting: tokio::sync::Mutex::new(()),
            prober: std::sync::OnceLock::new(),
            shutdown,
        }))
    }

    /// Who probes lost agents' hosts (the link role, once built); before
    /// that, this node probes them itself.
    pub fn set_prober(&self, prober: Arc<dyn HostProber>) {
        let _ = self.prober.set(prober);
    }

    /// Queues an alarm for every sink.
    pub fn raise(&self, alarm: Alarm) {
        metrics::counter!("gse_alarm_raised_total", "kind" => alarm.kind.as_str()).increment(1);
        tracing::warn!(kind = alarm.kind.as_str(), agent = %alarm.agent, task_id = %alarm.task_id, message = %alarm.message, "alarm");
        if self.tx.try_send(alarm).is_err() {
            metrics::counter!("gse_alarm_dropped_total").increment(1);
            tracing::error!(
                "alarm queue full; an alarm was dropped (are the alarm sinks reachable?)"
            );
        }
    }
}

#[cfg(test)]
mod tests;

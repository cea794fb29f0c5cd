//! The lost-connection alarm (K4), once per loss, across restarts too.
//!
//! When an agent's link drops ([`AlarmService::agent_lost`]) a timer of
//! `lost_grace` starts; if the agent is back first
//! ([`AlarmService::agent_back`]) nothing is raised (a blip), otherwise one
//! `agent_lost` goes out and the agent is remembered as alarmed until it
//! reconnects, which raises `agent_recovered` (the clear).
//!
//! A raised alarm is kept in the state store until it is cleared, so that a
//! restart neither repeats nor forgets it. When the node starts
//! ([`AlarmService::resume_after_restart`], before the link serves), every
//! agent whose record says it was last connected to this node is given
//! `lost_grace` from the start to come back, unless its loss was already
//! alarmed: whether the node crashed or stopped cleanly, and whether the
//! agent was connected when it went down or had dropped and was still in
//! its grace, an agent not back by then raises `agent_lost` once. An agent
//! alarmed before the restart is not alarmed again; its return clears it.
//! Records of other nodes are theirs to alarm.

use std::sync::Arc;

use gse_core::seams::{AgentRecord, LostAlarm};
use gse_core::{AgentKey, AgentRef};
use tokio_util::sync::CancellationToken;

use super::{Alarm, AlarmKind, AlarmService};

pub(super) enum LostState {
    /// Lost, waiting out the grace period; cancel to forget it.
    Pending(CancellationToken),
    /// The lost alarm went out at `raised_ms`; a reconnect raises the clear.
    Alarmed { raised_ms: u64 },
}

/// Why a grace period started.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cause {
    /// The link dropped while this node ran, for this reason; the agent
    /// was reached through the proxies `via`.
    Dropped { reason: String, via: Vec<String> },
    /// This node (re)started and the agent was not connected to it.
    Restarted,
    /// The node that held it left the cluster; this node, the survivor
    /// that adopts the dead node's agents, alarms for it.
    NodeLeft(String),
}

/// What a starting node does about an agent it knew.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Resume {
    /// Its loss was alarmed before the restart: not raised again; its
    /// return raises the clear.
    Alarmed { raised_ms: u64 },
    /// It gets `lost_grace` from now to come back, else `agent_lost`.
    Grace(Box<AgentRecord>),
}

/// The agents a node called `node_id` picks up when it starts, from the
/// store's agent records and the `agent_lost` alarms it kept (pure).
pub(super) fn plan(
    node_id: &str,
    records: Vec<AgentRecord>,
    raised: Vec<LostAlarm>,
) -> Vec<(AgentKey, Resume)> {
    let mut plan: Vec<(AgentKey, Resume)> = raised
        .into_iter()
        .filter(|a| a.node_id == node_id)
        .map(|a| {
            let raised_ms = a.raised_ms;
            (a.key, Resume::Alarmed { raised_ms })
        })
        .collect();
    let alarmed: std::collections::HashSet<AgentKey> = plan.iter().map(|(k, _)| *k).collect();
    plan.extend(
        records
            .into_iter()
            .filter(|r| r.node_id == node_id && !alarmed.contains(&r.key))
            .map(|r| (r.key, Resume::Grace(Box::new(r)))),
    );
    plan
}

impl AlarmService {
    /// An agent's link dropped: raise `agent_lost` after the grace period
    /// unless it comes back first. Repeated calls for one loss raise one
    /// alarm. `via`: the proxies it was reached through (nearest this node
    /// first), through which its host is probed.
    pub fn agent_lost(self: &Arc<Self>, rec: AgentRecord, reason: String, via: Vec<String>) {
        self.start_grace(rec, Cause::Dropped { reason, via });
    }

    /// Picks up the losses this node knew before it (re)started (see the
    /// module doc). Call once, before the link serves.
    pub async fn resume_after_restart(self: &Arc<Self>) {
        let records = match self.store.list_agents().await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the known agents; those that do not come back after this restart raise no agent_lost");
                return;
            }
        };
        let raised = self.store.list_lost_alarms().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the agent_lost alarms raised before this restart; they may be raised again");
            Vec::new()
        });
        let (mut waiting, mut alarmed) = (0, 0);
        for (key, resume) in plan(&self.node_id, records, raised) {
            match resume {
                Resume::Alarmed { raised_ms } => {
                    alarmed += 1;
                    self.lost
                        .lock()
                        .insert(key, LostState::Alarmed { raised_ms });
                }
                Resume::Grace(rec) => {
                    waiting += 1;
                    self.start_grace(*rec, Cause::Restarted);
                }
            }
        }
        tracing::info!(
            waiting,
            alarmed,
            grace = %humantime::format_duration(self.config.lost_grace),
            "agents known before this start: those not back within the grace raise agent_lost; those alarmed before stay alarmed until they return"
        );
    }

    /// Node `dead` left the cluster holding `agents` (their records name
    /// it): each gets `lost_grace` to register on some node, else this node
    /// raises `agent_lost` for it, once in the cluster (only the survivor
    /// that adopts a dead node's agents calls this).
    pub async fn adopt_dead_node(self: &Arc<Self>, dead: &str, agents: &[AgentKey]) {
        let refs: Vec<AgentRef> = agents.iter().map(|k| AgentRef::Key(*k)).collect();
        let records = match self.store.get_agents(&refs).await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(node = %dead, error = %e, "cannot read the agents of a node that left; those that do not come back raise no agent_lost");
                return;
            }
        };
        let mut waiting = 0;
        for rec in records.into_iter().flatten().filter(|r| r.node_id == dead) {
            waiting += 1;
            self.start_grace(rec, Cause::NodeLeft(dead.to_string()));
        }
        tracing::info!(node = %dead, waiting, grace = %humantime::format_duration(self.config.lost_grace), "adopted the agents of a node that left the cluster: those not back on any node within the grace raise agent_lost");
    }

    /// Whether the agent of `rec` registered again since (on any node: in
    /// a cluster it may come back on another node than the one that saw it
    /// go, which then never hears of its return).
    async fn back_since(&self, rec: &AgentRecord) -> bool {
        match self.store.get_agents(&[AgentRef::Key(rec.key)]).await {
            Ok(mut found) => found.pop().flatten().is_some_and(|now| {
                now.alive
                    && (now.node_id != rec.node_id || now.connected_at_ms != rec.connected_at_ms)
            }),
            Err(e) => {
                tracing::warn!(agent = %rec.key, error = %e, "cannot check whether a lost agent came back elsewhere; raising agent_lost");
                false
            }
        }
    }

    fn start_grace(self: &Arc<Self>, rec: AgentRecord, cause: Cause) {
        let token = {
            let mut lost = self.lost.lock();
            if lost.contains_key(&rec.key) {
                return;
            }
            let token = self.shutdown.child_token();
            lost.insert(rec.key, LostState::Pending(token.clone()));
            token
        };
        let this = self.clone();
        let grace = self.config.lost_grace;
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(grace) => this.fire_lost(rec, cause).await,
            }
        });
    }

    async fn fire_lost(&self, rec: AgentRecord, cause: Cause) {
        if self.back_since(&rec).await {
            let mut lost = self.lost.lock();
            if matches!(lost.get(&rec.key), Some(LostState::Pending(_))) {
                lost.remove(&rec.key);
            }
            tracing::debug!(agent = %rec.key, "a lost agent is back on another node: no agent_lost");
            return;
        }
        let verdict = self.probe_host(&rec, &cause).await;
        let alarm = Alarm {
            host_reachable: Some(verdict.reachable),
            probe: verdict.probe,
            ..Alarm::about_agent(
                AlarmKind::AgentLost,
                &self.node_id,
                &rec,
                self.lost_message(&rec, &cause),
            )
        };
        {
            let mut lost = self.lost.lock();
            match lost.get(&rec.key) {
                Some(LostState::Pending(_)) => {
                    let raised_ms = alarm.time_ms;
                    lost.insert(rec.key, LostState::Alarmed { raised_ms });
                }
                _ => return,
            }
        }
        self.raise(alarm);
        self.persist_lost(rec.key).await;
    }

    /// Whether the lost agent's host answers (C11), probed by whoever can
    /// reach it: the link role (this node, or the agent's proxy), or this
    /// node itself before the link role is up.
    async fn probe_host(&self, rec: &AgentRecord, cause: &Cause) -> gse_link::probe::Verdict {
        let via: &[String] = match cause {
            Cause::Dropped { via, .. } => via,
            _ => &[],
        };
        let spec = self.config.probe_spec();
        match self.prober.get() {
            Some(prober) => prober.probe(rec, via, spec).await,
            None => gse_link::probe::probe(rec.key.ip, spec).await,
        }
    }

    fn lost_message(&self, rec: &AgentRecord, cause: &Cause) -> String {
        let grace = humantime::format_duration(self.config.lost_grace);
        match cause {
            Cause::Dropped { reason, .. } => format!(
                "agent {} ({}) lost its connection to node {}: {reason}; it has not come back for {grace}",
                rec.key, rec.agent_id, self.node_id
            ),
            Cause::NodeLeft(dead) => format!(
                "agent {} ({}) was held by node {dead}, which left the cluster; it has not registered on any node for {grace} (last seen {})",
                rec.key,
                rec.agent_id,
                last_seen(rec.last_seen_ms)
            ),
            Cause::Restarted => format!(
                "agent {} ({}) of node {} not reconnected within {grace} after the server restarted (last seen {})",
                rec.key,
                rec.agent_id,
                self.node_id,
                last_seen(rec.last_seen_ms)
            ),
        }
    }

    /// An agent (re)registered: forget a pending loss, or clear a raised one.
    pub fn agent_back(self: &Arc<Self>, rec: &AgentRecord) {
        let state = self.lost.lock().remove(&rec.key);
        match state {
            Some(LostState::Pending(token)) => token.cancel(),
            Some(LostState::Alarmed { .. }) => {
                let message = format!(
                    "agent {} ({}) is connected again to node {}",
                    rec.key, rec.agent_id, self.node_id
                );
                self.raise(Alarm::about_agent(
                    AlarmKind::AgentRecovered,
                    &self.node_id,
                    rec,
                    message,
                ));
                let this = self.clone();
                let key = rec.key;
                tokio::spawn(async move { this.persist_lost(key).await });
            }
            None => {}
        }
    }

    /// Writes whether `key`'s `agent_lost` is raised, as it is when the
    /// write starts. Writes run one at a time, so after a quick raise and
    /// clear (or clear and raise) the store ends with the latest state.
    async fn persist_lost(&self, key: AgentKey) {
        let _one_at_a_time = self.persisting.lock().await;
        let raised = match self.lost.lock().get(&key) {
            Some(LostState::Alarmed { raised_ms }) => Some(*raised_ms),
            _ => None,
        };
        let written = match raised {
            Some(raised_ms) => {
                let node_id = self.node_id.clone();
                let alarm = LostAlarm {
                    key,
                    node_id,
                    raised_ms,
                };
                self.store.put_lost_alarm(alarm).await
            }
            None => self.store.clear_lost_alarm(key, &self.node_id).await,
        };
        if let Err(e) = written {
            tracing::error!(agent = %key, error = %e, "cannot keep the agent_lost state in the state store; after a restart this alarm may be raised again or not cleared");
        }
    }
}

/// `last_seen_ms` for a message: RFC 3339, or "never" for 0.
fn last_seen(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

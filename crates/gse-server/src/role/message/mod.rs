//! The message role: plugin messages between upper systems and the hosted
//! plugins on agents (COMPAT §1.3), both ways.
//!
//! An operator registers a slot per plugin (`[[plugin_message.slots]]`:
//! its `slot_id`, the plugin's name, a token and the upper system's
//! callback URL), as GSE's administrators do.
//!
//! - **Down** ([`MessageService::dispatch`], the API's `dispatch_message`
//!   and `dispatch_multi_message`): the slot's token is checked (stored
//!   hashed, [`crate::secret_cache`]); every target is looked up and
//!   located in one round trip each, then sent a `PluginMessage` for the
//!   slot's plugin on a stream of its own, through the [`Sender`] (so to
//!   agents of other nodes and behind proxies alike). The agent writes it
//!   to the plugin as a 0x9008 and answers a `PluginMessageAck` on that
//!   stream. The call waits for every answer up to
//!   `plugin_message.ack_timeout` and lists the agents that failed, with a
//!   code ([`codes`]) and why; those that took it are not listed, as the
//!   SDK's server expects.
//! - **Up** ([`AgentFrames::on_frame`]): a plugin's 0x900a comes as a
//!   `PluginMessageUp` to the node that holds its agent, which POSTs
//!   `{message_id, bk_agent_id, content}` to the callback of every slot of
//!   that plugin ([`crate::webhook`]: a non-200 answer is a failure,
//!   retried with back-off `callback_attempts` times, at most
//!   `callback_max_pending` at once; what is given up is logged and
//!   counted). Nothing is kept across a restart of the node: plugins that
//!   need an answer ask again (bkmonitorbeat does, backing off to an hour).

pub mod config;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gse_core::app_secret::SecretHash;
use gse_core::seams::{StateStore, StoreError};
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::{PluginMessage, PluginMessageAck, PluginMessageUp};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;

pub use config::{MessageConfig, SlotConfig};

use crate::cluster::sender::{Delivery, Sender};
use crate::role::link::AgentFrames;
use crate::secret_cache::{Verdict, VerifiedSecrets};
use crate::webhook::{Accept, Policy, Webhook};

/// The per-agent codes of a dispatch's failures.
pub mod codes {
    /// The agent is unknown, offline, moving or cannot be reached (as for
    /// tasks).
    pub const AGENT_DOWN: i64 = 117;
    /// The agent did not answer within `plugin_message.ack_timeout`.
    pub const TIMEOUT: i64 = 120;
    /// The plugin is not connected to the agent's plugin-message socket
    /// (as a user that may speak for plugins).
    pub const PLUGIN_NOT_CONNECTED: i64 = 829;
    /// The plugin's connections are not reading.
    pub const PLUGIN_NOT_READING: i64 = 830;
    /// The agent found the message not valid.
    pub const REFUSED: i64 = 831;
}

/// One dispatch as the API read it: the same message id to every target,
/// each with its content.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub slot_id: u64,
    pub token: String,
    pub message_id: String,
    /// `(bk_agent_id as sent, content)`.
    pub targets: Vec<(String, Vec<u8>)>,
}

/// An agent a dispatch did not reach, as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub bk_agent_id: String,
    pub code: i64,
    pub message: String,
}

/// Why a dispatch was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(
        "slot_id {0} is not registered on this node: the operator adds it as [[plugin_message.slots]] to every node's config"
    )]
    UnknownSlot(u64),
    #[error("token: wrong token for slot_id {0}")]
    WrongToken(u64),
    #[error("too many token checks are waiting; try again in a moment")]
    Busy,
    #[error("state store failed, try again later: {0}")]
    Store(#[from] StoreError),
}

/// A slot as the service uses it.
struct Slot {
    plugin: String,
    hash: SecretHash,
    callback: String,
}

/// A target waiting for its agent's answer.
struct Pending {
    agent: AgentKey,
    held: Delivery,
    answer: oneshot::Sender<Result<PluginMessageAck, String>>,
}

/// What [`MessageService::new`] needs.
pub struct MessageParts {
    pub config: MessageConfig,
    pub store: Arc<dyn StateStore>,
    pub sender: Arc<Sender>,
}

/// See the module doc.
pub struct MessageService {
    config: MessageConfig,
    store: Arc<dyn StateStore>,
    sender: Arc<Sender>,
    slots: HashMap<u64, Slot>,
    tokens: VerifiedSecrets,
    pending: Mutex<HashMap<u64, Pending>>,
    next_stream: AtomicU64,
    callbacks: Webhook,
}

impl MessageService {
    /// The service with its slots' token hashes (a plain token is hashed
    /// here: slow on purpose, call it off the async threads).
    pub fn new(parts: MessageParts) -> Arc<Self> {
        let c = &parts.config;
        let slots = c
            .slots
            .iter()
            .filter_map(|s| {
                let slot = Slot {
                    plugin: s.plugin.clone(),
                    hash: s.hash()?,
                    callback: s.callback.clone(),
                };
                Some((s.slot_id, slot))
            })
            .collect();
        let policy = Policy {
            timeout: c.callback_timeout,
            attempts: c.callback_attempts,
            first_backoff: Duration::from_secs(1),
            max_backoff: c.callback_max_backoff,
            max_pending: c.callback_max_pending,
            accept: Accept::Only200,
        };
        Arc::new(MessageService {
            callbacks: Webhook::new("plugin-message callback", policy),
            config: parts.config,
            store: parts.store,
            sender: parts.sender,
            slots,
            tokens: VerifiedSecrets::default(),
            pending: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &MessageConfig {
        &self.config
    }

    /// Sends `d`'s message to its targets' plugin and lists those it did
    /// not reach.
    #[tracing::instrument(skip_all, fields(slot_id = d.slot_id, message_id = %d.message_id, targets = d.targets.len()))]
    pub async fn dispatch(&self, d: Dispatch) -> Result<Vec<Failure>, MessageError> {
        let slot = self.check_slot(d.slot_id, &d.token).await?;
        let refs: Vec<Option<AgentRef>> = d
            .targets
            .iter()
            .map(|(name, _)| AgentRef::parse(name).ok())
            .collect();
        let asked: Vec<AgentRef> = refs.iter().flatten().cloned().collect();
        // One answer per parsed name, in order.
        let mut known = self.store.identify_agents(&asked).await?.into_iter();
        let keys: Vec<Option<AgentKey>> = refs
            .iter()
            .map(|r| {
                r.as_ref()
                    .and_then(|_| known.next().flatten().map(|k| k.key))
            })
            .collect();
        let mut failures = Vec::new();
        let located_keys: Vec<AgentKey> = keys.iter().flatten().copied().collect();
        let mut located = self.sender.locate_many(&located_keys).await.into_iter();
        let mut outgoing = Vec::new();
        let mut waits = Vec::new();
        for ((name, content), key) in d.targets.into_iter().zip(keys) {
            let Some(key) = key else {
                failures.push(failure(
                    &name,
                    codes::AGENT_DOWN,
                    crate::role::task::unknown_agent(&name),
                ));
                continue;
            };
            let at = match located.next() {
                Some(Ok(at)) => at,
                Some(Err(e)) => {
                    failures.push(failure(&name, codes::AGENT_DOWN, e.for_host(&name)));
                    continue;
                }
                None => continue,
            };
            let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().insert(
                stream,
                Pending {
                    agent: key,
                    held: at.delivery(),
                    answer: tx,
                },
            );
            let frame = Frame::new(
                MsgType::PluginMessage,
                stream,
                &PluginMessage {
                    plugin: slot.clone(),
                    message_id: d.message_id.clone(),
                    content,
                },
            );
            outgoing.push(((stream, name.clone()), at, frame));
            waits.push((stream, name, rx));
        }
        let mut unsent = HashMap::new();
        for ((stream, name), sent) in self.sender.deliver_all(outgoing).await {
            if let Err(e) = sent {
                self.pending.lock().remove(&stream);
                unsent.insert(stream, failure(&name, codes::AGENT_DOWN, e.for_host(&name)));
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        let answers = futures::future::join_all(waits.into_iter().map(|(stream, name, rx)| {
            let unsent = unsent.remove(&stream);
            async move {
                if let Some(f) = unsent {
                    return Some(f);
                }
                let answer = tokio::time::timeout_at(deadline, rx).await;
                self.pending.lock().remove(&stream);
                self.judge(&name, answer)
            }
        }))
        .await;
        failures.extend(answers.into_iter().flatten());
        tracing::info!(failed = failures.len(), "plugin message dispatched");
        Ok(failures)
    }

    /// The slot's plugin, if `token` is the slot's.
    async fn check_slot(&self, slot_id: u64, token: &str) -> Result<String, MessageError> {
        let slot = self
            .slots
            .get(&slot_id)
            .ok_or(MessageError::UnknownSlot(slot_id))?;
        let name = format!("slot {slot_id}");
        match self.tokens.verify_named(&name, &slot.hash, token).await {
            Verdict::Right => Ok(slot.plugin.clone()),
            Verdict::Wrong => Err(MessageError::WrongToken(slot_id)),
            Verdict::Busy => Err(MessageError::Busy),
        }
    }

    /// A target's failure from its agent's answer, or `None` if it took it.
    fn judge(
        &self,
        name: &str,
        answer: Result<
            Result<Result<PluginMessageAck, String>, oneshot::error::RecvError>,
            tokio::time::error::Elapsed,
        >,
    ) -> Option<Failure> {
        use gse_proto::plugin_message as ack;
        let (code, why) = match answer {
            Ok(Ok(Ok(a))) => match a.code {
                ack::DELIVERED => return None,
                ack::NOT_CONNECTED => (codes::PLUGIN_NOT_CONNECTED, a.message),
                ack::UNREACHABLE => (codes::PLUGIN_NOT_READING, a.message),
                _ => (codes::REFUSED, a.message),
            },
            Ok(Ok(Err(why))) => (codes::AGENT_DOWN, why),
            Ok(Err(_)) => (
                codes::AGENT_DOWN,
                "the node stopped waiting for the agent".into(),
            ),
            Err(_) => (
                codes::TIMEOUT,
                format!(
                    "agent {name} did not answer within {} (plugin_message.ack_timeout)",
                    humantime::format_duration(self.config.ack_timeout)
                ),
            ),
        };
        Some(failure(name, code, why))
    }

    /// The targets waiting on `agent`'s claim `ended`: it will not answer.
    fn claim_ended(&self, agent: AgentKey, ended: Delivery, why: &str) {
        let gone: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let streams: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.agent == agent && p.held == ended)
                .map(|(s, _)| *s)
                .collect();
            streams.iter().filter_map(|s| pending.remove(s)).collect()
        };
        for p in gone {
            let _ = p.answer.send(Err(format!("agent {agent}: {why}")));
        }
    }

    fn on_ack(&self, agent: AgentKey, stream: u64, ack: PluginMessageAck) {
        let mut pending = self.pending.lock();
        match pending.get(&stream) {
            Some(p) if p.agent == agent => {
                if let Some(p) = pending.remove(&stream) {
                    let _ = p.answer.send(Ok(ack));
                }
            }
            _ => {
                tracing::debug!(agent = %agent, stream, "an answer to a plugin message nobody waits for (late, or not ours)")
            }
        }
    }

    /// A plugin's message for its upper system: POSTed to the callback of
    /// every slot of that plugin.
    fn on_up(&self, agent: AgentKey, up: PluginMessageUp) {
        let callbacks: Vec<(u64, String)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.plugin == up.plugin && !s.callback.is_empty())
            .map(|(id, s)| (*id, s.callback.clone()))
            .collect();
        if callbacks.is_empty() {
            tracing::warn!(agent = %agent, plugin = %up.plugin, message_id = %up.message_id, "a plugin message for which no slot with a callback is registered ([[plugin_message.slots]]) is dropped");
            return;
        }
        let store = self.store.clone();
        let hook = self.callbacks.clone();
        tokio::spawn(async move {
            // Upper systems know agents by their GSE 2.0 id when they
            // have one.
            let bk_agent_id = match store.identify_agents(&[AgentRef::Key(agent)]).await {
                Ok(found) => found
                    .into_iter()
                    .flatten()
                    .map(|k| k.agent_id)
                    .find(|id| !id.is_empty())
                    .unwrap_or_else(|| agent.to_string()),
                Err(_) => agent.to_string(),
            };
            let body = serde_json::to_vec(&Callback {
                message_id: &up.message_id,
                bk_agent_id: &bk_agent_id,
                content: &String::from_utf8_lossy(&up.content),
            })
            .expect("a callback body serialises");
            for (slot_id, url) in callbacks {
                let what = format!(
                    "plugin message {} of {} from {bk_agent_id} for slot {slot_id}",
                    up.message_id, up.plugin
                );
                if let Err(e) = hook.post(&url, body.clone(), what, |_| {}) {
                    tracing::error!(slot_id, error = %e, "a plugin message is dropped");
                }
            }
        });
    }
}

/// The body a callback gets (COMPAT §1.3).
#[derive(Serialize)]
struct Callback<'a> {
    message_id: &'a str,
    bk_agent_id: &'a str,
    content: &'a str,
}

fn failure(name: &str, code: i64, message: String) -> Failure {
    Failure {
        bk_agent_id: name.to_string(),
        code,
        message,
    }
}

impl AgentFrames for MessageService {
    fn on_frame(&self, agent: AgentKey, frame: Frame) {
        match frame.msg_type {
            MsgType::PluginMessageAck => match frame.decode::<PluginMessageAck>() {
                Ok(ack) => self.on_ack(agent, frame.stream_id, ack),
                Err(e) => {
                    tracing::warn!(agent = %agent, error = %e, "ignoring a plugin message answer that does not decode")
                }
            },
            MsgType::PluginMessageUp => match frame.decode::<PluginMessageUp>() {
                Ok(up) => self.on_up(agent, up),
                Err(e) => {
                    tracing::warn!(agent = %agent, error = %e, "ignoring a plugin message that does not decode")
                }
            },
            other => {
                tracing::debug!(agent = %agent, msg_type = other.to_u16(), "ignoring a frame type the message role does not handle")
            }
        }
    }

    fn on_disconnect(&self, agent: AgentKey, ended: Delivery) {
        self.claim_ended(
            agent,
            ended,
            "its link ended before it answered; send again",
        );
    }

    fn on_moving(&self, agent: AgentKey, moved_from: Delivery) {
        self.claim_ended(
            agent,
            moved_from,
            "it is moving to another node and did not get the message; send again",
        );
    }
}

//! Plugin messages both ways (COMPAT §1.3): which connections speak for
//! which plugin, the server's messages to them (0x9008) and theirs to the
//! server (0x900a).
//!
//! A connection speaks for the plugin its keepalive names once its peer
//! may ([`Speakers`]: root, the agent's own user, `plugin.message_users`);
//! it is then listed under that name with a small queue its connection
//! task writes from. A `PluginMessage` from the node is put in the queue of
//! every connection of its plugin without waiting, and answered with one
//! `PluginMessageAck` on its stream: how many took it, or why none did. A
//! 0x900a from a connection that may speak goes upstream as a
//! `PluginMessageUp` while a link is attached; with none (or a full queue)
//! it is dropped and logged: the SDK's `SendMessage` gets no answer either
//! way, and its users retry (bkmonitorbeat backs off up to an hour).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use gse_proto::link::{PluginMessage, PluginMessageAck, PluginMessageUp};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::codec::{DISPATCH_MESSAGE, MessageFrame};

/// Frames one plugin connection may have waiting to be written.
pub const PUSH_QUEUE: usize = 64;
/// Longest plugin name and message id taken (the SDK's message ids are at
/// most 64 characters).
pub const MAX_NAME: usize = 64;
use gse_proto::plugin_message::{
    BAD_MESSAGE, NOT_CONNECTED as PLUGIN_NOT_CONNECTED, UNREACHABLE as PLUGIN_UNREACHABLE,
};

/// The users whose connections may speak for a plugin.
#[derive(Clone, Debug, Default)]
pub struct Speakers {
    uids: HashSet<u32>,
}

impl Speakers {
    /// Root, the agent's own user and `users` (names or numeric uids);
    /// a name that does not resolve is logged and left out.
    #[cfg(unix)]
    pub fn resolve(users: &[String]) -> Self {
        let mut uids: HashSet<u32> = [0, nix::unistd::geteuid().as_raw()].into();
        for user in users {
            let uid = user.parse::<u32>().ok().or_else(|| {
                nix::unistd::User::from_name(user)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            });
            match uid {
                Some(uid) => {
                    uids.insert(uid);
                }
                None => {
                    tracing::error!(user = %user, "plugin.message_users names a user this host does not have; left out")
                }
            }
        }
        Speakers { uids }
    }

    /// Without Unix peer credentials there is no one to admit: nobody may
    /// speak for a plugin (the message socket is Unix-only).
    #[cfg(not(unix))]
    pub fn resolve(_users: &[String]) -> Self {
        Speakers::default()
    }

    /// Root and the agent's own user only.
    pub fn default_only() -> Self {
        Speakers::resolve(&[])
    }

    /// Nobody (tests: every peer is a stranger).
    #[cfg(test)]
    pub fn nobody() -> Self {
        Speakers::default()
    }

    pub fn may_speak(&self, uid: Option<u32>) -> bool {
        uid.is_some_and(|uid| self.uids.contains(&uid))
    }
}

/// The info part of a 0x900a (plugin -> agent), as the SDK sends it.
#[derive(Debug, Deserialize)]
struct RespondInfo {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message_id: String,
}

/// The info part of a 0x9008 (agent -> plugin).
#[derive(Serialize)]
struct DispatchInfo<'a> {
    message_id: &'a str,
    session_id: &'a str,
}

/// Why a plugin's 0x900a was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespondError {
    #[error(
        "reserved0 ({info}) + reserved1 ({content}) is not the body length ({body}), or the info part is empty"
    )]
    Parts {
        info: u32,
        content: u32,
        body: usize,
    },
    #[error("the info part is not the JSON object the SDK sends: {0}")]
    Info(String),
    #[error("{field} is empty or longer than {MAX_NAME} bytes")]
    Field { field: &'static str },
}

/// One plugin connection as the hub lists it.
struct Listener {
    conn: u64,
    tx: mpsc::Sender<MessageFrame>,
}

/// See the module doc.
#[derive(Default)]
pub struct MessageHub {
    speakers: Speakers,
    plugins: Mutex<HashMap<String, Vec<Listener>>>,
    upstream: Mutex<Option<mpsc::Sender<Frame>>>,
    next_conn: AtomicU64,
    seq: AtomicU64,
}

impl MessageHub {
    pub fn new(speakers: Speakers) -> Self {
        MessageHub {
            speakers,
            ..MessageHub::default()
        }
    }

    pub fn speakers(&self) -> &Speakers {
        &self.speakers
    }

    /// A new connection's id.
    pub(super) fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Lists connection `conn` under `plugin`; frames for it come out of
    /// the returned queue.
    pub(super) fn listen(&self, plugin: &str, conn: u64) -> mpsc::Receiver<MessageFrame> {
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let mut plugins = self.plugins.lock();
        for list in plugins.values_mut() {
            list.retain(|l| l.conn != conn);
        }
        plugins.retain(|_, list| !list.is_empty());
        plugins
            .entry(plugin.to_string())
            .or_default()
            .push(Listener { conn, tx });
        tracing::debug!(
            plugin,
            conn,
            "a plugin connection listens for the server's messages"
        );
        rx
    }

    /// Forgets connection `conn` (it closed).
    pub(super) fn forget(&self, conn: u64) {
        let mut plugins = self.plugins.lock();
        for list in plugins.values_mut() {
            list.retain(|l| l.conn != conn);
        }
        plugins.retain(|_, list| !list.is_empty());
    }

    /// Plugins with a connection listening, by name.
    pub fn listening(&self) -> Vec<String> {
        let mut names: Vec<String> = self.plugins.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The link's queue for acks and plugins' messages, while a session is up.
    pub fn attach(&self, tx: mpsc::Sender<Frame>) {
        *self.upstream.lock() = Some(tx);
    }

    pub fn detach(&self) {
        *self.upstream.lock() = None;
    }

    /// A `PluginMessage` frame from the node: delivered, and answered on
    /// its stream. False for a frame type of the family this agent does
    /// not take.
    pub fn handle(&self, frame: &Frame) -> bool {
        if frame.msg_type != MsgType::PluginMessage {
            return false;
        }
        let ack = match frame.decode::<PluginMessage>() {
            Ok(m) => self.deliver(&m),
            Err(e) => PluginMessageAck {
                code: BAD_MESSAGE,
                message: format!("the PluginMessage does not decode: {e}"),
                ..PluginMessageAck::default()
            },
        };
        self.send_up(
            Frame::new(MsgType::PluginMessageAck, frame.stream_id, &ack),
            "a plugin message's answer",
        );
        true
    }

    /// Writes `m` to every connection of its plugin, without waiting.
    pub fn deliver(&self, m: &PluginMessage) -> PluginMessageAck {
        let ack = |code, message: String, connections| PluginMessageAck {
            message_id: m.message_id.clone(),
            code,
            message,
            connections,
        };
        if m.message_id.len() > MAX_NAME || m.plugin.is_empty() || m.plugin.len() > MAX_NAME {
            return ack(
                BAD_MESSAGE,
                format!("plugin name and message id must be 1..={MAX_NAME} bytes"),
                0,
            );
        }
        let frame = dispatch_frame(
            &m.message_id,
            &m.content,
            self.seq.fetch_add(1, Ordering::Relaxed),
        );
        let plugins = self.plugins.lock();
        let Some(list) = plugins.get(&m.plugin) else {
            return ack(
                PLUGIN_NOT_CONNECTED,
                format!(
                    "plugin {:?} is not connected to this agent's plugin-message socket (as root, the agent's user or one of plugin.message_users)",
                    m.plugin
                ),
                0,
            );
        };
        let took = list
            .iter()
            .filter(|l| l.tx.try_send(frame.clone()).is_ok())
            .count() as u32;
        if took == 0 {
            return ack(
                PLUGIN_UNREACHABLE,
                format!(
                    "plugin {:?} has {} connection(s), none reading: their queues are full",
                    m.plugin,
                    list.len()
                ),
                0,
            );
        }
        ack(0, String::new(), took)
    }

    /// A plugin's 0x900a (`body`, with its header's two part lengths) from
    /// a connection that speaks as `speaking` (its keepalive's name):
    /// upstream as a `PluginMessageUp`.
    pub fn respond(
        &self,
        speaking: Option<&str>,
        (info_len, content_len): (u32, u32),
        body: &Bytes,
    ) -> Result<(), RespondError> {
        let parts_ok =
            info_len > 0 && u64::from(info_len) + u64::from(content_len) == body.len() as u64;
        if !parts_ok {
            return Err(RespondError::Parts {
                info: info_len,
                content: content_len,
                body: body.len(),
            });
        }
        let info: RespondInfo = serde_json::from_slice(&body[..info_len as usize])
            .map_err(|e| RespondError::Info(e.to_string()))?;
        let plugin = match info.name.as_str() {
            "" => speaking.unwrap_or_default().to_string(),
            name => name.to_string(),
        };
        if plugin.is_empty() || plugin.len() > MAX_NAME {
            return Err(RespondError::Field { field: "name" });
        }
        if info.message_id.is_empty() || info.message_id.len() > MAX_NAME {
            return Err(RespondError::Field {
                field: "message_id",
            });
        }
        let up = PluginMessageUp {
            plugin,
            message_id: info.message_id,
            content: body.slice(info_len as usize..).to_vec(),
        };
        self.send_up(
            Frame::new(MsgType::PluginMessageUp, 0, &up),
            "a plugin's message for the server",
        );
        Ok(())
    }

    /// Queues `frame` for the link; dropped (and logged) without one.
    fn send_up(&self, frame: Frame, what: &'static str) {
        let sent = match self.upstream.lock().as_ref() {
            Some(tx) => tx.try_send(frame).is_ok(),
            None => false,
        };
        if !sent {
            tracing::warn!("{what} is dropped: no link to the server, or its queue is full");
        }
    }
}

/// A 0x9008 carrying `content` for `message_id`: the info JSON, then the
/// content; the header's reserved words give both lengths.
pub fn dispatch_frame(message_id: &str, content: &[u8], sequence: u64) -> MessageFrame {
    let info = serde_json::to_vec(&DispatchInfo {
        message_id,
        session_id: "",
    })
    .expect("the dispatch info serialises");
    let mut body = BytesMut::with_capacity(info.len() + content.len());
    body.put_slice(&info);
    body.put_slice(content);
    let mut frame = MessageFrame::new(DISPATCH_MESSAGE, sequence, body.freeze());
    frame.header.reserved0 = info.len() as u32;
    frame.header.reserved1 = content.len() as u32;
    frame
}

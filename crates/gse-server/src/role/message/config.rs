//! `[plugin_message]`: the slots upper systems use to talk to hosted
//! plugins, and how long dispatches wait and callbacks retry.
//!
//! ```toml
//! [plugin_message]
//! ack_timeout = "5s"            # how long a dispatch waits for the agents
//! max_content_bytes = 1048576   # largest message content
//! callback_timeout = "5s"       # per callback attempt
//! callback_attempts = 5         # then the message is given up (logged)
//! callback_max_backoff = "30s"
//! callback_max_pending = 10000  # callbacks under way at once
//!
//! [[plugin_message.slots]]
//! slot_id = 1
//! plugin = "bkmonitorbeat"      # the hosted plugin's process name
//! token_hash = "$argon2id$..."  # `gse-server apps hash --new`; or token = "..."
//! callback = "http://monitor.example.com/gse/callback"
//! ```

use std::time::Duration;

use gse_core::app_secret::SecretHash;
use serde::{Deserialize, Serialize};

/// Longest plugin name and message id (the SDK's limit for message ids).
pub const MAX_NAME: usize = 64;
/// Largest `max_content_bytes`: what the agent's plugin-message socket
/// takes at most (the SDK's 10 MiB), less room for the header and info.
pub const MAX_CONTENT_LIMIT: usize = (10 << 20) - 4096;

/// One registered slot: who may send to plugin `plugin`, and where that
/// plugin's messages go.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    pub slot_id: u64,
    /// The hosted plugin's name (its process name, as its keepalive says).
    pub plugin: String,
    /// The slot's token in plain text (keep the file 0600; prefer
    /// `token_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The slot's token as an Argon2id PHC string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<SecretHash>,
    /// Where the plugin's messages are POSTed (`{message_id, bk_agent_id,
    /// content}`); empty: they are dropped (logged).
    #[serde(default)]
    pub callback: String,
}

impl SlotConfig {
    /// The hash the caller's token is checked against.
    pub fn hash(&self) -> Option<SecretHash> {
        match (&self.token_hash, &self.token) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(t)) => Some(SecretHash::hash(t)),
            (None, None) => None,
        }
    }
}

/// `[plugin_message]` settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    /// How long `dispatch_message` waits for every agent's answer; an
    /// agent that did not answer in time is listed as failed.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Largest content of one message (after `front_content` and
    /// `back_content` are added), bytes.
    #[serde(default = "default_max_content_bytes")]
    pub max_content_bytes: usize,
    /// Per callback POST attempt.
    #[serde(default = "default_callback_timeout", with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// Attempts per callback (a non-200 answer is a failure); after the
    /// last the message is dropped and logged.
    #[serde(default = "default_callback_attempts")]
    pub callback_attempts: u32,
    /// Longest wait between two attempts (from 1s, doubling).
    #[serde(default = "default_callback_max_backoff", with = "humantime_serde")]
    pub callback_max_backoff: Duration,
    /// Callbacks under way at once (retries included); beyond it a
    /// plugin's message is dropped and logged.
    #[serde(default = "default_callback_max_pending")]
    pub callback_max_pending: usize,
    #[serde(default)]
    pub slots: Vec<SlotConfig>,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_content_bytes() -> usize {
    1 << 20
}

fn default_callback_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_callback_attempts() -> u32 {
    5
}

fn default_callback_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_callback_max_pending() -> usize {
    10_000
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            ack_timeout: default_ack_timeout(),
            max_content_bytes: default_max_content_bytes(),
            callback_timeout: default_callback_timeout(),
            callback_attempts: default_callback_attempts(),
            callback_max_backoff: default_callback_max_backoff(),
            callback_max_pending: default_callback_max_pending(),
            slots: Vec::new(),
        }
    }
}

impl MessageConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.ack_timeout < Duration::from_millis(100)
            || self.ack_timeout > Duration::from_secs(60)
        {
            p.push(format!(
                "plugin_message.ack_timeout = {:?}: it must be between 100ms and 60s",
                self.ack_timeout
            ));
        }
        if !(1..=MAX_CONTENT_LIMIT).contains(&self.max_content_bytes) {
            p.push(format!(
                "plugin_message.max_content_bytes = {}: it must be 1..={MAX_CONTENT_LIMIT}",
                self.max_content_bytes
            ));
        }
        if self.callback_attempts == 0 || self.callback_max_pending == 0 {
            p.push(
                "plugin_message.callback_attempts and callback_max_pending must be at least 1"
                    .into(),
            );
        }
        if self.callback_timeout.is_zero() {
            p.push("plugin_message.callback_timeout = 0s: it must be more".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let key = format!("plugin_message.slots[{i}] (slot_id {})", slot.slot_id);
            if !seen.insert(slot.slot_id) {
                p.push(format!("{key}: slot_id is used twice"));
            }
            if slot.plugin.is_empty() || slot.plugin.len() > MAX_NAME {
                p.push(format!(
                    "{key}: plugin must be the hosted plugin's name, 1..={MAX_NAME} bytes"
                ));
            }
            match (&slot.token, &slot.token_hash) {
                (None, None) => p.push(format!(
                    "{key}: give token_hash (from `gse-server apps hash --new`) or token"
                )),
                (Some(t), _) if t.is_empty() => p.push(format!("{key}: token is empty")),
                _ => {}
            }
            let url_ok = reqwest::Url::parse(&slot.callback)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !slot.callback.is_empty() && !url_ok {
                p.push(format!(
                    "{key}: callback = {:?} is not an http:// or https:// URL",
                    slot.callback
                ));
            }
        }
        p
    }

    pub fn slot(&self, slot_id: u64) -> Option<&SlotConfig> {
        self.slots.iter().find(|s| s.slot_id == slot_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u64) -> SlotConfig {
        SlotConfig {
            slot_id: id,
            plugin: "bkmonitorbeat".into(),
            token: Some("t".into()),
            token_hash: None,
            callback: "http://127.0.0.1:1/cb".into(),
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_slots_are_named() {
        assert!(MessageConfig::default().problems().is_empty());
        let cfg = MessageConfig {
            slots: vec![
                slot(1),
                slot(1),
                SlotConfig {
                    token: None,
                    callback: "ftp://x".into(),
                    plugin: String::new(),
                    ..slot(2)
                },
            ],
            ..MessageConfig::default()
        };
        let problems = cfg.problems().join("\n");
        assert!(problems.contains("slot_id is used twice"), "{problems}");
        assert!(
            problems.contains("slots[2] (slot_id 2): plugin"),
            "{problems}"
        );
        assert!(problems.contains("give token_hash"), "{problems}");
        assert!(
            problems.contains("not an http:// or https:// URL"),
            "{problems}"
        );
    }
}

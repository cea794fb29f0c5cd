//! `[alarm]` config section.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where alarms go and when an agent counts as lost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// JSON-lines alarm log; default `<data_dir>/alarms.jsonl`.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// POST each alarm as JSON to this URL (http or https); none by default.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// How long one webhook POST may take.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// How long an agent may stay disconnected before `agent_lost` is raised:
    /// after its link drops, and after this node starts, for every agent
    /// last connected to it.
    #[serde(default = "default_lost_grace", with = "humantime_serde")]
    pub lost_grace: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_lost_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            log_file: None,
            webhook_url: None,
            webhook_timeout: default_webhook_timeout(),
            lost_grace: default_lost_grace(),
        }
    }
}

impl AlarmConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(url) = &self.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!(
                "alarm.webhook_url = {url:?}: it must start with http:// or https://"
            ));
        }
        if self.lost_grace > Duration::from_secs(20) {
            problems.push(format!(
                "alarm.lost_grace = {}: at most 20s, so that a lost agent is alarmed within 30 s",
                humantime::format_duration(self.lost_grace)
            ));
        }
        problems
    }
}

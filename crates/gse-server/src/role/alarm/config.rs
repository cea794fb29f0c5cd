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
    /// When `agent_lost` is raised, its host is probed first (C11): ICMP
    /// echo where this process may send it, else (or without a reply) a
    /// TCP connect to this port, where a refusal counts as a live host.
    /// 0: ICMP only. Hosts of a cloud area are probed by their proxy.
    #[serde(default = "default_probe_tcp_port")]
    pub probe_tcp_port: u16,
    /// Time for each probe.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_lost_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_probe_tcp_port() -> u16 {
    // sshd: listening on nearly every server.
    22
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            log_file: None,
            webhook_url: None,
            webhook_timeout: default_webhook_timeout(),
            lost_grace: default_lost_grace(),
            probe_tcp_port: default_probe_tcp_port(),
            probe_timeout: default_probe_timeout(),
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
        if self.probe_timeout.is_zero() || self.probe_timeout > Duration::from_secs(4) {
            problems.push(format!(
                "alarm.probe_timeout = {}: more than 0 and at most 4s (ICMP, then TCP), so that a lost agent is alarmed within 30 s",
                humantime::format_duration(self.probe_timeout)
            ));
        }
        problems
    }

    /// How lost hosts are probed.
    pub fn probe_spec(&self) -> gse_link::probe::ProbeSpec {
        gse_link::probe::ProbeSpec {
            tcp_port: self.probe_tcp_port,
            timeout: self.probe_timeout,
        }
    }
}

//! Alarm delivery: a JSON-lines log file and an optional webhook.
//!
//! The log line is written (and flushed) before the webhook is tried, so the
//! file is the record of every alarm even when the webhook is down. Webhook
//! POSTs run on their own tasks with three attempts each.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Alarm, AlarmConfig};

/// Attempts per webhook POST.
const WEBHOOK_ATTEMPTS: u32 = 3;

/// The sinks an alarm is delivered to.
pub(crate) struct Delivery {
    log: Option<(PathBuf, std::fs::File)>,
    webhook: Option<(String, reqwest::Client)>,
}

impl Delivery {
    pub(crate) fn open(config: &AlarmConfig) -> std::io::Result<Self> {
        let log = match &config.log_file {
            Some(path) => Some((path.clone(), gse_core::logging::append_file(path)?)),
            None => None,
        };
        let webhook = config.webhook_url.as_ref().map(|url| {
            let client = reqwest::Client::builder()
                .timeout(config.webhook_timeout)
                .build()
                .expect("a plain reqwest client always builds");
            (url.clone(), client)
        });
        Ok(Delivery { log, webhook })
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Alarm>) {
        while let Some(alarm) = rx.recv().await {
            self.write_log(&alarm);
            if let Some((url, client)) = &self.webhook {
                tokio::spawn(post_webhook(client.clone(), url.clone(), alarm));
            }
        }
    }

    fn write_log(&mut self, alarm: &Alarm) {
        let Some((path, file)) = &mut self.log else {
            return;
        };
        let mut line = serde_json::to_vec(alarm).expect("alarms always serialise");
        line.push(b'\n');
        if let Err(e) = file.write_all(&line).and_then(|_| file.flush()) {
            metrics::counter!("gse_alarm_sink_failures_total", "sink" => "log").increment(1);
            tracing::error!(path = %path.display(), error = %e, "cannot write the alarm log; an alarm is missing from it");
        }
    }
}

async fn post_webhook(client: reqwest::Client, url: String, alarm: Alarm) {
    let mut last_error = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        match client.post(&url).json(&alarm).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => last_error = format!("HTTP {}", resp.status()),
            Err(e) => last_error = e.to_string(),
        }
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
        }
    }
    metrics::counter!("gse_alarm_sink_failures_total", "sink" => "webhook").increment(1);
    tracing::error!(url = %url, error = %last_error, attempts = WEBHOOK_ATTEMPTS, "alarm webhook failed; the alarm is only in the alarm log");
}

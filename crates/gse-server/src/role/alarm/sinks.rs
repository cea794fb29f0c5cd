//! Alarm delivery: a JSON-lines log file and an optional webhook.
//!
//! The log line is written (and flushed) before the webhook is tried, so the
//! file is the record of every alarm even when the webhook is down. Webhook
//! POSTs ([`crate::webhook`]) run on their own tasks with three attempts
//! each, at most [`WEBHOOK_PENDING`] at once.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::webhook::{Accept, Policy, Webhook};

use super::{Alarm, AlarmConfig};

/// Attempts per webhook POST.
const WEBHOOK_ATTEMPTS: u32 = 3;
/// Webhook POSTs under way at once; an alarm beyond it is only in the log.
pub(crate) const WEBHOOK_PENDING: usize = 1024;

/// The sinks an alarm is delivered to.
pub(crate) struct Delivery {
    log: Option<(PathBuf, std::fs::File)>,
    webhook: Option<(String, Webhook)>,
}

impl Delivery {
    pub(crate) fn open(config: &AlarmConfig) -> std::io::Result<Self> {
        let log = match &config.log_file {
            Some(path) => Some((path.clone(), gse_core::logging::append_file(path)?)),
            None => None,
        };
        let webhook = config.webhook_url.as_ref().map(|url| {
            let policy = Policy {
                timeout: config.webhook_timeout,
                attempts: WEBHOOK_ATTEMPTS,
                first_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(2),
                max_pending: WEBHOOK_PENDING,
                accept: Accept::Success,
            };
            (url.clone(), Webhook::new("alarm webhook", policy))
        });
        Ok(Delivery { log, webhook })
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Alarm>) {
        while let Some(alarm) = rx.recv().await {
            self.write_log(&alarm);
            if let Some((url, hook)) = &self.webhook {
                let body = serde_json::to_vec(&alarm).expect("alarms always serialise");
                let failed = |delivered: bool| {
                    if !delivered {
                        metrics::counter!("gse_alarm_sink_failures_total", "sink" => "webhook")
                            .increment(1);
                    }
                };
                if let Err(e) = hook.post(url, body, "an alarm".into(), failed) {
                    metrics::counter!("gse_alarm_sink_failures_total", "sink" => "webhook")
                        .increment(1);
                    tracing::error!(error = %e, "the alarm is only in the alarm log");
                }
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

//! One transfer through the file API, as bk-job drives it:
//! `async_transfer_file` (one task: the source file to every target's
//! shared `store_dir`), then `get_transfer_file_result` every poll interval
//! until every download entry is final.
//!
//! A target's completion time is its entry's `end_time` (stamped on this
//! machine's clock) minus the POST's start; when the server leaves
//! `end_time` at 0 it is when the bench first saw the entry final.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_core::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::api::ApiClient;

const TRANSFER: &str = "/api/v2/task/extensions/async_transfer_file";
const RESULT: &str = "/api/v2/task/extensions/get_transfer_file_result";
const TERMINATE: &str = "/api/v2/task/extensions/async_terminate_transfer_file";

/// `error_code` of an entry still running.
const ERR_RUNNING: i64 = 115;
/// `content.mode` of a target's entry.
const MODE_DOWNLOAD: i64 = 1;

/// What to send where.
pub struct TransferPlan {
    pub source: String,
    pub source_dir: String,
    pub file_name: String,
    pub targets: Vec<String>,
    pub target_dir: String,
    pub timeout: Duration,
    pub poll_every: Duration,
}

/// One entry of `get_transfer_file_result` (the fields the bench reads).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct FileEntry {
    pub error_code: i64,
    pub error_msg: String,
    pub content: FileContent,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct FileContent {
    pub mode: i64,
    pub dest_agent_id: String,
    pub size: u64,
    pub start_time: u64,
    pub end_time: u64,
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
}

/// What a transfer gave.
#[derive(Debug, Default)]
pub struct TransferFigures {
    /// Per target that succeeded: seconds from the POST to its end.
    pub completion_s: Vec<f64>,
    /// Per target that started: seconds from the POST to its `start_time`.
    pub start_s: Vec<f64>,
    /// POST until the last download entry was seen final.
    pub wall_s: f64,
    pub succeeded: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub bytes_p2p: u64,
    pub bytes_direct: u64,
    /// The source's upload entry(ies) as the server gave them.
    pub upload_entries: Vec<Value>,
}

/// Starts the transfer and polls it to the end; terminates it if it runs
/// past its timeout (+30 s for the server's own timeout to show).
pub async fn run(api: &ApiClient, plan: &TransferPlan) -> Result<TransferFigures> {
    let began = Instant::now();
    let began_ms = now_ms();
    let task_id = start(api, plan).await?;
    eprintln!(
        "transfer {task_id} started to {} targets",
        plan.targets.len()
    );
    let give_up = began + plan.timeout + Duration::from_secs(30);
    let mut seen_final: HashMap<String, f64> = HashMap::new();
    let mut tick = interval(plan.poll_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_note = Instant::now();
    loop {
        tick.tick().await;
        let entries = poll(api, &task_id).await?;
        let downloads: Vec<&(FileEntry, Value)> = entries
            .iter()
            .filter(|(e, _)| e.content.mode == MODE_DOWNLOAD)
            .collect();
        for (e, _) in &downloads {
            if e.error_code != ERR_RUNNING {
                seen_final
                    .entry(e.content.dest_agent_id.clone())
                    .or_insert_with(|| began.elapsed().as_secs_f64());
            }
        }
        if downloads.len() >= plan.targets.len() && seen_final.len() >= downloads.len() {
            return Ok(figures(&entries, began_ms, &seen_final, began.elapsed()));
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "  {:.0}s: {} of {} targets done",
                began.elapsed().as_secs_f64(),
                seen_final.len(),
                plan.targets.len()
            );
        }
        if Instant::now() >= give_up {
            let _ = api
                .call::<Value>(TERMINATE, &json!({ "task_id": task_id }))
                .await;
            bail!(
                "transfer {task_id}: only {} of {} targets final after {:?}; terminated it",
                seen_final.len(),
                plan.targets.len(),
                began.elapsed()
            );
        }
    }
}

async fn start(api: &ApiClient, plan: &TransferPlan) -> Result<String> {
    let agents: Vec<Value> = plan
        .targets
        .iter()
        .map(|t| json!({"bk_agent_id": t}))
        .collect();
    let body = json!({
        "tasks": [{
            "source": {"file_name": plan.file_name, "store_dir": plan.source_dir,
                       "agent": {"bk_agent_id": plan.source}, "file_type": 1},
            "target": {"file_name": plan.file_name, "store_dir": plan.target_dir, "agents": agents},
        }],
        "timeout_seconds": plan.timeout.as_secs(),
        "auto_mkdir": true,
        // The agents' own caps ([file] upload_speed_mb) are what is measured.
        "upload_speed": 0,
        "download_speed": 0,
    });
    let (data, _): (Value, _) = api.call(TRANSFER, &body).await?;
    data["result"]["task_id"]
        .as_str()
        .map(str::to_string)
        .context("async_transfer_file answered without data.result.task_id")
}

/// Every entry, typed and as sent.
async fn poll(api: &ApiClient, task_id: &str) -> Result<Vec<(FileEntry, Value)>> {
    let (data, _): (Value, _) = api.call(RESULT, &json!({ "task_id": task_id })).await?;
    let list = data["result"].as_array().cloned().unwrap_or_default();
    list.into_iter()
        .map(|v| {
            let e: FileEntry = serde_json::from_value(v.clone()).with_context(|| {
                format!("an entry of get_transfer_file_result has an unexpected shape: {v}")
            })?;
            Ok((e, v))
        })
        .collect()
}

fn figures(
    entries: &[(FileEntry, Value)],
    began_ms: u64,
    seen_final: &HashMap<String, f64>,
    wall: Duration,
) -> TransferFigures {
    let mut f = TransferFigures {
        wall_s: wall.as_secs_f64(),
        ..TransferFigures::default()
    };
    for (e, raw) in entries {
        let c = &e.content;
        if c.mode != MODE_DOWNLOAD {
            f.upload_entries.push(raw.clone());
            continue;
        }
        f.bytes_p2p += c.bytes_p2p;
        f.bytes_direct += c.bytes_direct;
        if c.start_time >= began_ms {
            f.start_s.push((c.start_time - began_ms) as f64 / 1000.0);
        }
        if e.error_code != 0 {
            f.failed += 1;
            f.first_failure.get_or_insert_with(|| {
                format!(
                    "{}: error {} {}",
                    c.dest_agent_id, e.error_code, e.error_msg
                )
            });
            continue;
        }
        f.succeeded += 1;
        let completion = if c.end_time > began_ms {
            (c.end_time - began_ms) as f64 / 1000.0
        } else {
            seen_final
                .get(&c.dest_agent_id)
                .copied()
                .unwrap_or(f.wall_s)
        };
        f.completion_s.push(completion);
    }
    f
}

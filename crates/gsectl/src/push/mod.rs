//! `gsectl push`: send a file, a directory or a selection of files from one
//! agent to many (F1..F10 from a terminal).
//!
//! Steps: parse the flags into a [`spec::Plan`] -> `async_transfer_file`
//! (one task per `--to`) -> poll `get_transfer_file_result` while
//! [`progress`] shows a bar per target -> print the targets grouped by
//! outcome, the time and the P2P/direct split ([`results`]). Ctrl-C asks
//! the server to terminate the transfer and keeps polling until every
//! target reports 126 (a second Ctrl-C stops waiting). Exit code 0 only if
//! every target's download ended with 0.

mod progress;
mod results;
mod spec;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::client::ApiClient;
use progress::Progress;
use results::Entries;
use spec::{PassThrough, Plan, Selection, Target, ZoneHop};

const TRANSFER: &str = "/api/v2/task/extensions/async_transfer_file";
const RESULT: &str = "/api/v2/task/extensions/get_transfer_file_result";
const TERMINATE: &str = "/api/v2/task/extensions/async_terminate_transfer_file";

/// How long past `--timeout` to wait for targets the server never reports.
const REPORT_GRACE: Duration = Duration::from_secs(60);

/// Arguments of `gsectl push`.
#[derive(Args, Debug)]
#[command(after_long_help = EXAMPLES)]
pub struct PushArgs {
    /// The source: AGENT:/path. AGENT is cloud_id:ip (0:10.0.0.1), an IPv4
    /// address (cloud 0) or a bk_agent_id; the path after it is a file, or a
    /// directory when it ends in / or with --dir.
    #[arg(long, value_name = "AGENT:/PATH")]
    pub from: String,
    /// Where to put it: AGENT[,AGENT..]:/dir, the directory on every one of
    /// those agents (a sent directory arrives as /dir/<its name>). Repeat
    /// for different directories.
    #[arg(long, required = true, value_name = "AGENTS:/DIR", value_parser = spec::target)]
    pub to: Vec<Target>,
    /// Send the --from directory with everything under it.
    #[arg(long)]
    pub dir: bool,
    /// Send the files under the --from directory whose relative path
    /// matches this glob (e.g. '*.log', 'conf/**/*.toml').
    #[arg(long, value_name = "PATTERN", conflicts_with_all = ["regex", "dir"])]
    pub wildcard: Option<String>,
    /// Send the files under the --from directory whose relative path
    /// matches this regular expression.
    #[arg(long, value_name = "PATTERN", conflicts_with = "dir")]
    pub regex: Option<String>,
    /// Install the file under this name on the targets (single file only).
    #[arg(long, value_name = "NEWNAME")]
    pub name: Option<String>,
    /// Owner of the files on the targets: USER or USER:GROUP (default: the
    /// agent's user).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub owner: Option<String>,
    /// Mode of the files on the targets, octal (e.g. 644); default: the
    /// source's.
    #[arg(long, value_name = "MODE", value_parser = spec::permission)]
    pub permission: Option<u32>,
    /// Create missing target directories (the default).
    #[arg(long, overrides_with = "no_mkdir")]
    pub auto_mkdir: bool,
    /// Fail a target whose directory does not exist instead of creating it.
    #[arg(long, overrides_with = "auto_mkdir")]
    pub no_mkdir: bool,
    /// Upload cap per uploading agent for this transfer, MB/s (0: none).
    #[arg(long, value_name = "MB", default_value_t = 0)]
    pub upload_speed: u32,
    /// Download cap per target for this transfer, MB/s (0: none).
    #[arg(long, value_name = "MB", default_value_t = 0)]
    pub download_speed: u32,
    /// Give up on targets not done after this many seconds (error 120).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub timeout: u32,
    /// Route to ZONE through relay agents: ZONE=RELAY[,RELAY..]. Repeat
    /// for each hop, in order.
    #[arg(long, value_name = "ZONE=RELAYS", value_parser = spec::zone_hop)]
    pub zone_chain: Vec<ZoneHop>,
    /// Let agents of zone FROM fetch from peers in zone TO: FROM:TO.
    #[arg(long, value_name = "FROM:TO", value_parser = spec::pass_through)]
    pub pass_through: Vec<PassThrough>,
    /// How often to poll for results: milliseconds (500) or a duration (2s).
    #[arg(long, value_name = "MS", default_value = "500", value_parser = parse_poll)]
    pub poll: Duration,
    /// Print the final results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

const EXAMPLES: &str = "\
Examples:
  # one file to two hosts' /opt/app (created if missing), 20 MB/s upload cap per peer
  gsectl push --from 0:10.0.0.1:/data/app.tgz --to 0:10.0.0.2,0:10.0.0.3:/opt/app --upload-speed 20

  # a whole directory (arrives as /etc/app on 10.0.0.5)
  gsectl push --from 0:10.0.0.1:/etc/app/ --to 0:10.0.0.5:/etc

  # only the .conf files under /etc/app, owned by app with mode 640
  gsectl push --from 0:10.0.0.1:/etc/app --wildcard '*.conf' --to 0:10.0.0.5:/tmp/conf \\
      --owner app:app --permission 640

  # rename on the way, and print the results as JSON
  gsectl push --from 10.0.0.1:/data/v2.tgz --name current.tgz --to 10.0.0.2,10.0.0.3:/opt --json

Output: a bar per target while it runs, then the targets grouped by outcome
(OK, or the error code and message), the total time, and how many bytes the
targets got from each other (P2P) and direct from the source. Exit code 0
only if every target succeeded. Ctrl-C terminates the transfer on the
targets still running and waits until they report it (error 126).";

fn parse_poll(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => humantime::parse_duration(value)
            .map_err(|e| format!("expected milliseconds (500) or a duration (2s): {e}")),
    }
}

// === impl PushArgs ===

impl PushArgs {
    /// The typed plan; refuses a --from that is not AGENT:/path.
    pub fn plan(&self) -> Result<Plan> {
        let pattern = match (&self.wildcard, &self.regex) {
            (Some(p), _) => Some((Selection::Wildcard, p.as_str())),
            (None, Some(p)) => Some((Selection::Regex, p.as_str())),
            (None, None) => None,
        };
        let source = spec::source(&self.from, self.dir, pattern)?;
        if self.name.is_some() && source.selection != Selection::File {
            anyhow::bail!(
                "--name renames a single file; it cannot be used when sending a directory or a pattern"
            );
        }
        Ok(Plan {
            source,
            targets: self.to.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            permission: self.permission,
            auto_mkdir: !self.no_mkdir,
            upload_mb: self.upload_speed,
            download_mb: self.download_speed,
            timeout_s: self.timeout,
            zone_chain: self.zone_chain.clone(),
            pass_through: self.pass_through.clone(),
        })
    }
}

pub async fn run(client: &ApiClient, args: &PushArgs) -> Result<bool> {
    let plan = args.plan()?;
    let started = Instant::now();
    let data = client.post(TRANSFER, &plan.request()).await?;
    let task_id = data["result"]["task_id"]
        .as_str()
        .context("the server's answer has no data.result.task_id")?
        .to_string();
    let expected = plan.expected_downloads();
    let entries = poll(client, args, &task_id, expected, started).await?;
    let elapsed = started.elapsed();
    let ok = entries.all_succeeded(expected);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&task_id, &entries, ok, elapsed))?
        );
    } else {
        print!("{}", entries.render(expected, elapsed));
    }
    Ok(ok)
}

fn json_report(task_id: &str, entries: &Entries, ok: bool, elapsed: Duration) -> Value {
    let split = entries.byte_split();
    json!({
        "task_id": task_id,
        "ok": ok,
        "elapsed_s": elapsed.as_secs_f64(),
        "bytes_p2p": split.p2p,
        "bytes_direct": split.direct,
        "p2p_share": split.p2p_share(),
        "entries": entries.all().collect::<Vec<_>>(),
    })
}

/// Polls until every expected download is final (or the server has not
/// reported some for `--timeout` + grace); Ctrl-C terminates the transfer.
async fn poll(
    client: &ApiClient,
    args: &PushArgs,
    task_id: &str,
    expected: usize,
    started: Instant,
) -> Result<Entries> {
    let mut entries = Entries::default();
    let mut progress = Progress::new(task_id);
    let give_up = started + Duration::from_secs(u64::from(args.timeout)) + REPORT_GRACE;
    let mut interrupted = false;
    loop {
        let data = client.post(RESULT, &json!({ "task_id": task_id })).await?;
        entries.update(&data["result"]);
        progress.show(&entries, expected, started.elapsed());
        if entries.downloads_done(expected) {
            break;
        }
        if Instant::now() >= give_up {
            progress.note(&format!("giving up: not every target reported a final result within --timeout + {REPORT_GRACE:?}"));
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(args.poll) => {}
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    progress.note("second Ctrl-C: not waiting any longer; the targets may still be stopping");
                    break;
                }
                interrupted = true;
                progress.note(&format!("interrupted: terminating transfer {task_id} (Ctrl-C again to stop waiting) ..."));
                client.post(TERMINATE, &json!({ "task_id": task_id })).await?;
            }
        }
    }
    progress.finish();
    Ok(entries)
}

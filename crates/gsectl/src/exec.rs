//! `gsectl exec`: run a command or a script on many hosts and show the
//! results (T1..T8 from a terminal).
//!
//! Steps: build the bk-job-shaped request -> `async_execute_script` ->
//! poll `get_execute_script_result` with per-host byte offsets (collecting
//! each host's output) while a progress line counts hosts done, failed and
//! running -> print the output grouped by identical (outcome, output).
//! Ctrl-C asks the server to terminate the task and keeps polling until
//! every host has ended. The exit code is 1 when any host did not succeed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use gse_core::task::{self, is_final};
use serde_json::{Value, json};

use crate::client::ApiClient;

const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
const RESULT: &str = "/api/v2/task/extensions/get_execute_script_result";
const TERMINATE: &str = "/api/v2/task/extensions/async_terminate_execute_script";

/// Arguments of `gsectl exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Target hosts, comma-separated: `cloud:ip` or real agent ids
    /// (e.g. 0:127.0.0.1,0:127.0.0.2).
    #[arg(long, required = true, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Run as this user on the targets (default: the agent's user, root).
    #[arg(long)]
    pub user: Option<String>,
    /// Give the command the user's login environment (profile, PATH, HOME).
    #[arg(long)]
    pub login: bool,
    /// Kill the command (and everything it started) after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u32,
    /// Run this local script file on the targets instead of a command.
    #[arg(long, conflicts_with = "command")]
    pub script: Option<PathBuf>,
    /// Arguments for --script.
    #[arg(long, requires = "script", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// How often to poll for results, e.g. 500ms.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Print the final results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The command line to run (after `--`).
    #[arg(last = true, required_unless_present = "script")]
    pub command: Vec<String>,
}

/// One host's result as collected across polls.
#[derive(Clone, Debug, Default)]
struct HostResult {
    status: i32,
    error_code: i32,
    error_msg: String,
    exit_code: i64,
    output: String,
}

impl HostResult {
    fn succeeded(&self) -> bool {
        self.status == task::STATUS_SUCCESS && self.error_code == task::ERR_NONE
    }

    fn outcome(&self) -> String {
        match (self.status, self.error_code) {
            (task::STATUS_SUCCESS, _) => "success".into(),
            (task::STATUS_TIMEOUT, _) => format!("timeout: {}", self.error_msg),
            (_, task::ERR_NONE) if self.status == task::STATUS_FAILED => {
                format!("failed: exit code {}", self.exit_code)
            }
            (_, code) => format!("failed ({code}): {}", self.error_msg),
        }
    }
}

pub async fn run(client: &ApiClient, args: &ExecArgs) -> Result<bool> {
    let request = build_request(args)?;
    let data = client.post(EXECUTE, &request).await?;
    let task_id = data["result"]["task_id"]
        .as_str()
        .context("the server's answer has no data.result.task_id")?
        .to_string();
    let results = poll(client, args, &task_id).await?;
    if args.json {
        let list: Vec<Value> = results
            .iter()
            .map(|(host, r)| {
                json!({"host": host, "status": r.status, "error_code": r.error_code, "error_msg": r.error_msg,
                       "exit_code": r.exit_code, "output": r.output})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"task_id": task_id, "results": list}))?
        );
    } else {
        print!("{}", render_groups(&results));
    }
    Ok(results.values().all(HostResult::succeeded))
}

fn build_request(args: &ExecArgs) -> Result<Value> {
    let user = args.user.clone().unwrap_or_default();
    let agents: Vec<Value> = args
        .hosts
        .iter()
        .map(|h| {
            let mut a = json!({"bk_agent_id": h.trim()});
            if !user.is_empty() {
                a["user"] = json!(user);
            }
            a
        })
        .collect();
    let mut request = json!({"agents": agents, "login_env": args.login});
    let command = match &args.script {
        Some(path) => {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the script {}", path.display()))?;
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("sh");
            let name = format!("bk_gse_script_gsectl_{:08x}.{ext}", rand::random::<u32>());
            let dir = format!(
                "/tmp/bkjob/{}",
                if user.is_empty() {
                    "root"
                } else {
                    user.as_str()
                }
            );
            request["scripts"] =
                json!([{"script_name": name, "script_store_dir": dir, "script_content": content}]);
            match &args.args {
                Some(a) => format!("{dir}/{name} {a}"),
                None => format!("{dir}/{name}"),
            }
        }
        None => args.command.join(" "),
    };
    if command.trim().is_empty() {
        bail!("nothing to run: give a command after `--` or --script FILE");
    }
    request["atomic_tasks"] =
        json!([{"atomic_task_id": 0, "command": command, "timeout_seconds": args.timeout}]);
    Ok(request)
}

/// Polls until every host has a final result; Ctrl-C terminates the task.
async fn poll(
    client: &ApiClient,
    args: &ExecArgs,
    task_id: &str,
) -> Result<BTreeMap<String, HostResult>> {
    let mut results: BTreeMap<String, HostResult> = args
        .hosts
        .iter()
        .map(|h| (h.trim().to_string(), HostResult::default()))
        .collect();
    let mut done: BTreeMap<String, bool> = results.keys().map(|h| (h.clone(), false)).collect();
    let started = Instant::now();
    let progress = Progress::new();
    let mut interrupted = false;
    loop {
        let pending: Vec<Value> = results
            .iter()
            .filter(|(h, _)| !done[*h])
            .map(|(h, r)| json!({"bk_agent_id": h, "atomic_tasks": [{"atomic_task_id": 0, "offset": r.output.len()}]}))
            .collect();
        let data = client
            .post(RESULT, &json!({"task_id": task_id, "agent_tasks": pending}))
            .await?;
        for item in data["result"].as_array().into_iter().flatten() {
            let Some(host) = item["bk_agent_id"].as_str() else {
                continue;
            };
            let Some(r) = results.get_mut(host) else {
                continue;
            };
            r.output.push_str(item["screen"].as_str().unwrap_or(""));
            r.status = item["status"].as_i64().unwrap_or(0) as i32;
            r.error_code = item["error_code"].as_i64().unwrap_or(0) as i32;
            r.error_msg = item["error_msg"].as_str().unwrap_or("").to_string();
            r.exit_code = item["script_exit_code"].as_i64().unwrap_or(0);
            // Final, and the output is complete (nothing came this round).
            if is_final(r.status, r.error_code) && item["screen"].as_str().unwrap_or("").is_empty()
            {
                done.insert(host.to_string(), true);
            }
        }
        progress.show(task_id, &results, &done, started.elapsed());
        if done.values().all(|d| *d) {
            progress.finish();
            return Ok(results);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.poll) => {}
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                eprintln!("\ninterrupted: terminating task {task_id} on the hosts still running ...");
                client.post(TERMINATE, &json!({"task_id": task_id})).await?;
            }
        }
    }
}

/// The live progress line (rewritten in place on a terminal).
struct Progress {
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(
        &self,
        task_id: &str,
        results: &BTreeMap<String, HostResult>,
        done: &BTreeMap<String, bool>,
        elapsed: Duration,
    ) {
        let finished: Vec<&HostResult> = results
            .iter()
            .filter(|(h, _)| done[*h])
            .map(|(_, r)| r)
            .collect();
        let failed = finished.iter().filter(|r| !r.succeeded()).count();
        let line = format!(
            "{task_id}: {} hosts, {} done, {} failed, {} running ({:.1}s)",
            results.len(),
            finished.len() - failed,
            failed,
            results.len() - finished.len(),
            elapsed.as_secs_f64()
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Output grouped by identical (outcome, output), largest groups first.
fn render_groups(results: &BTreeMap<String, HostResult>) -> String {
    let mut groups: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (host, r) in results {
        groups
            .entry((r.outcome(), r.output.clone()))
            .or_default()
            .push(host);
    }
    let mut ordered: Vec<_> = groups.into_iter().collect();
    ordered.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    let mut out = String::new();
    for ((outcome, output), hosts) in ordered {
        let noun = if hosts.len() == 1 { "host" } else { "hosts" };
        out.push_str(&format!(
            "=== {} {noun} ({}): {outcome}\n",
            hosts.len(),
            hosts.join(", ")
        ));
        out.push_str(&output);
        if !output.is_empty() && !output.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: i32, error_code: i32, exit: i64, output: &str) -> HostResult {
        HostResult {
            status,
            error_code,
            error_msg: if error_code == 117 {
                "agent 0:10.0.0.9 is offline".into()
            } else {
                String::new()
            },
            exit_code: exit,
            output: output.into(),
        }
    }

    #[test]
    fn identical_outputs_are_grouped() {
        let mut results = BTreeMap::new();
        results.insert("0:127.0.0.1".to_string(), result(2, 0, 0, "hello\n"));
        results.insert("0:127.0.0.2".to_string(), result(2, 0, 0, "hello\n"));
        results.insert("0:10.0.0.9".to_string(), result(5, 117, 0, ""));
        let text = render_groups(&results);
        assert!(
            text.starts_with("=== 2 hosts (0:127.0.0.1, 0:127.0.0.2): success\nhello\n"),
            "{text}"
        );
        assert!(
            text.contains("=== 1 host (0:10.0.0.9): failed (117): agent 0:10.0.0.9 is offline"),
            "{text}"
        );
    }

    #[test]
    fn outcomes_read_like_job_does() {
        assert_eq!(result(5, 0, 3, "").outcome(), "failed: exit code 3");
        assert!(result(2, 0, 0, "").succeeded());
        assert!(!result(5, 0, 1, "").succeeded());
    }
}

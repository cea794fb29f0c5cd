//! The bench's side of the server's HTTP API, as bk-job calls it:
//! `async_execute_script`, `get_execute_script_result` (docs/API.md),
//! `get_agent_status` to know when the agents are all alive, `list_nodes`
//! (a cluster's nodes and their loads), and the server's `/metrics` page. Other calls (the file API of `p2p`) go through
//! [`ApiClient::call`] from their bench's module.
//!
//! Every call sends the app's credentials in the `X-Bkapi-Authorization`
//! header and checks the envelope; answers are read into the few fields
//! the bench needs. A poll also reports the size of its answer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gse_server::role::api::AppConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// Longest any one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long all agents have to show alive in the API once connected.
const ALIVE_WITHIN: Duration = Duration::from_secs(60);
const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
const RESULTS: &str = "/api/v2/task/extensions/get_execute_script_result";
const AGENT_STATUS: &str = "/api/c/compapi/v2/gse/get_agent_status/";

/// One entry of a `get_execute_script_result` answer.
#[derive(Deserialize, Debug, Clone)]
pub struct ResultEntry {
    pub bk_agent_id: String,
    pub status: i32,
    pub error_code: i32,
    pub error_msg: String,
    /// Unix ms, 0 until known.
    pub start_time: u64,
    pub end_time: u64,
    pub screen: String,
}

/// One node of a `list_nodes` answer: its id and load.
#[derive(Deserialize, Debug, Clone)]
pub struct NodeLoad {
    pub node_id: String,
    /// Agents it holds, as its registry entry last said.
    pub agents: u64,
}

#[derive(Deserialize)]
struct Envelope<T> {
    code: i64,
    message: String,
    data: Option<T>,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    result: T,
}

#[derive(Deserialize)]
struct Started {
    task_id: String,
}

#[derive(Deserialize)]
struct AgentAlive {
    bk_agent_alive: i32,
}

/// A client of one server's API, as one app.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl ApiClient {
    pub fn new(api: SocketAddr, app: &AppConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let auth = json!({"bk_app_code": app.app_code, "bk_app_secret": app.app_secret.as_deref().unwrap_or_default()});
        Ok(ApiClient {
            http,
            base: format!("http://{api}"),
            auth: auth.to_string(),
        })
    }

    /// Starts `command` on every target (`cloud_id:ip`); returns the task id.
    pub async fn execute(
        &self,
        targets: &[String],
        command: &str,
        timeout_s: u32,
    ) -> Result<String> {
        let agents: Vec<Value> = targets.iter().map(|t| json!({"bk_agent_id": t})).collect();
        let body = json!({
            "agents": agents,
            "atomic_tasks": [{"atomic_task_id": 0, "command": command, "timeout_seconds": timeout_s}],
        });
        let (started, _): (Wrapped<Started>, _) = self.call(EXECUTE, &body).await?;
        Ok(started.result.task_id)
    }

    /// Every entry of `task_id` (no `agent_tasks`), and the answer's size
    /// in bytes.
    pub async fn results(&self, task_id: &str) -> Result<(Vec<ResultEntry>, usize)> {
        let body = json!({ "task_id": task_id });
        let (answer, bytes): (Wrapped<Vec<ResultEntry>>, _) = self.call(RESULTS, &body).await?;
        Ok((answer.result, bytes))
    }

    /// How many of `ips` (cloud 0) are alive.
    pub async fn alive(&self, ips: &[String]) -> Result<usize> {
        self.alive_in(0, ips).await
    }

    /// How many agents of cloud `area` at `ips` are alive.
    pub async fn alive_in(&self, area: i64, ips: &[String]) -> Result<usize> {
        let hosts: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "bk_cloud_id": area}))
            .collect();
        let body = json!({ "hosts": hosts });
        let (status, _): (std::collections::HashMap<String, AgentAlive>, _) =
            self.call(AGENT_STATUS, &body).await?;
        Ok(status.values().filter(|a| a.bk_agent_alive == 1).count())
    }

    /// The `node_id`s `list_nodes` reports (K1), sorted.
    pub async fn node_ids(&self) -> Result<Vec<String>> {
        Ok(self.nodes().await?.into_iter().map(|n| n.node_id).collect())
    }

    /// `list_nodes` (K1): every node and the agents it holds, sorted by id.
    pub async fn nodes(&self) -> Result<Vec<NodeLoad>> {
        let (mut nodes, _): (Vec<NodeLoad>, _) =
            self.call("/api/v2/cluster/list_nodes", &json!({})).await?;
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// The server's `GET /metrics` page (no credentials needed).
    pub async fn metrics_text(&self) -> Result<String> {
        let answer = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics failed")?
            .error_for_status()
            .context("GET /metrics")?;
        answer.text().await.context("cannot read /metrics")
    }

    /// Polls get_agent_status until every one of `ips` is alive; `check`
    /// runs before each poll and ends the wait with its error.
    pub async fn wait_alive(
        &self,
        ips: &[String],
        check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        self.wait_alive_in(0, ips, check).await
    }

    /// [`Self::wait_alive`] for agents of cloud `area`.
    pub async fn wait_alive_in(
        &self,
        area: i64,
        ips: &[String],
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + ALIVE_WITHIN;
        loop {
            check()?;
            let alive = self.alive_in(area, ips).await?;
            if alive == ips.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {alive} of {} agents alive after {ALIVE_WITHIN:?}",
                    ips.len()
                );
            }
            eprintln!("waiting: {alive}/{} agents alive", ips.len());
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// POSTs `body` to `path`; the envelope's `data`, and the answer's size.
    pub async fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<(T, usize)> {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-Bkapi-Authorization", &self.auth)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path} failed"))?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .with_context(|| format!("cannot read the answer of {path}"))?;
        let envelope: Envelope<T> = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{path} answered HTTP {status} with a body that is not the expected envelope: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )
        })?;
        if envelope.code != 0 {
            bail!(
                "{path} answered code {}: {}",
                envelope.code,
                envelope.message
            );
        }
        let data = envelope
            .data
            .with_context(|| format!("{path} answered code 0 without data"))?;
        Ok((data, bytes.len()))
    }
}

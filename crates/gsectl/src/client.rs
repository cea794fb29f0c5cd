//! [`ApiClient`]: one POST to the gse API, with credentials, the envelope
//! unwrapped and failures explained (server down, refused call, non-API answer).

use std::fmt;

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;
use serde_json::Value;

use crate::connection::Connection;

/// Most of a non-envelope answer quoted in an error.
const MAX_QUOTED_BODY: usize = 200;

/// Calls the gse API as one app.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    authorization: String,
    timeout: std::time::Duration,
}

/// The server answered with `result: false`.
#[derive(Debug)]
pub struct ApiFailure {
    pub code: i64,
    pub message: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ApiFailure {}

#[derive(Deserialize)]
struct Envelope {
    result: bool,
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

// === impl ApiClient ===

impl ApiClient {
    pub fn new(conn: &Connection) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(conn.timeout)
            .build()
            .context("could not set up the HTTP client")?;
        let authorization = serde_json::json!({
            "bk_app_code": conn.app_code,
            "bk_app_secret": conn.app_secret,
        })
        .to_string();
        Ok(ApiClient {
            http,
            base: conn.api.trim_end_matches('/').to_string(),
            authorization,
            timeout: conn.timeout,
        })
    }

    /// POSTs `body` to `path` (e.g. `/api/v2/cluster/list_agents`) and
    /// returns the envelope's `data`; `result: false` becomes [`ApiFailure`].
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let response = self
            .http
            .post(&url)
            .header("X-Bkapi-Authorization", &self.authorization)
            .json(body)
            .send()
            .await
            .map_err(|e| self.explain_send_error(&url, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("the answer from {url} broke off (HTTP {status})"))?;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|_| {
            let text = String::from_utf8_lossy(&bytes);
            let quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
            anyhow!("{url} answered HTTP {status} with something other than a gse API envelope: {quoted:?}; check --api")
        })?;
        if !envelope.result {
            return Err(ApiFailure {
                code: envelope.code,
                message: envelope.message,
            }
            .into());
        }
        Ok(envelope.data)
    }

    fn explain_send_error(&self, url: &str, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "could not connect to the gse API at {url} ({}): is gse-server running there? Check --api / GSE_API",
                root_cause(&e)
            )
        } else if e.is_timeout() {
            anyhow!(
                "no answer from {url} within {}; the server may be overloaded, or raise --http-timeout",
                humantime::format_duration(self.timeout)
            )
        } else {
            anyhow!("calling {url} failed: {}", root_cause(&e))
        }
    }
}

/// The innermost error's text: for a refused connection "Connection refused
/// (os error 111)" rather than reqwest's generic "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

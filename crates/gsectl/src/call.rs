//! `gsectl call PATH [BODY]`: any API endpoint by its path, for the calls
//! that have no subcommand of their own (data routes, process operations,
//! snapshots). The body is JSON from the argument, or from stdin with `-`;
//! the envelope's `data` is printed as indented JSON.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::client::ApiClient;

/// Largest body read from stdin.
const MAX_BODY: u64 = 16 << 20;

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The endpoint's path, e.g. /api/v2/data/query_route (see docs/API.md).
    pub path: String,
    /// The JSON body; `-` reads it from stdin; default `{}`.
    pub body: Option<String>,
}

pub async fn run(client: &ApiClient, args: &CallArgs) -> Result<()> {
    if !args.path.starts_with('/') {
        bail!(
            "the path {:?} must start with '/', e.g. /api/v2/data/query_route",
            args.path
        );
    }
    let text = match args.body.as_deref() {
        None => "{}".to_string(),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_BODY)
                .read_to_string(&mut text)
                .context("cannot read the JSON body from stdin")?;
            text
        }
        Some(text) => text.to_string(),
    };
    let body: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "the body is not valid JSON: {}",
            text.chars().take(200).collect::<String>()
        )
    })?;
    let data = client.post(&args.path, &body).await?;
    println!("{}", serde_json::to_string_pretty(&data)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Connection;

    #[tokio::test]
    async fn bad_paths_and_bodies_are_refused_before_any_request() {
        let conn = Connection {
            api: "http://127.0.0.1:9".into(),
            app_code: "a".into(),
            app_secret: "b".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        let client = ApiClient::new(&conn).unwrap();
        let no_slash = CallArgs {
            path: "api/v2/x".into(),
            body: None,
        };
        let err = run(&client, &no_slash).await.unwrap_err().to_string();
        assert!(err.contains("must start with '/'"), "{err}");
        let bad_json = CallArgs {
            path: "/api/v2/x".into(),
            body: Some("{nope".into()),
        };
        let err = run(&client, &bad_json).await.unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}

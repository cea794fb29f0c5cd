//! Where the API is and which app gsectl calls it as: flags, then env, then a
//! quickstart.json (the file `gse-server quickstart` writes), in that order.
//!
//! What the user typed ([`ConnectionArgs`]) stays apart from what is used
//! ([`Connection`]); [`fill`] is the pure step between them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

/// Quickstart file looked for in the current directory when flags and env
/// leave something unset.
pub const DEFAULT_QUICKSTART: &str = "gse-quickstart/quickstart.json";

/// Name of the file inside a quickstart directory.
const QUICKSTART_FILE: &str = "quickstart.json";

/// Connection options shared by every subcommand.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Base URL of the gse API, e.g. http://127.0.0.1:59313 (a gateway URL
    /// ending in /api/bk-gse/prod works too).
    #[arg(long, env = "GSE_API", value_name = "URL", global = true)]
    pub api: Option<String>,

    /// App code to authenticate as (an app registered with `gse-server apps add`).
    #[arg(long, env = "GSE_APP_CODE", value_name = "CODE", global = true)]
    pub app_code: Option<String>,

    /// Secret of that app.
    #[arg(
        long,
        env = "GSE_APP_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        global = true
    )]
    pub app_secret: Option<String>,

    /// A quickstart.json, or the directory holding it; fills in whatever of
    /// --api, --app-code and --app-secret was not given. Without it,
    /// ./gse-quickstart/quickstart.json is tried.
    #[arg(long, env = "GSE_QUICKSTART", value_name = "PATH", global = true)]
    pub quickstart: Option<PathBuf>,

    /// Give up on one HTTP call after this long (e.g. 10s, 2m).
    #[arg(long = "http-timeout", env = "GSE_HTTP_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = humantime::parse_duration, global = true)]
    pub http_timeout: Duration,
}

/// Settings a call is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub api: String,
    pub app_code: String,
    pub app_secret: String,
    pub timeout: Duration,
}

/// The part of quickstart.json gsectl reads; other keys are ignored.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Quickstart {
    pub api: String,
    pub bk_app_code: String,
    pub bk_app_secret: String,
}

// === impl ConnectionArgs ===

impl ConnectionArgs {
    /// Resolves the settings, reading a quickstart file only when needed.
    pub fn resolve(&self) -> Result<Connection> {
        let quickstart = match &self.quickstart {
            Some(path) => Some(Quickstart::load(path)?),
            None if self.is_incomplete() => {
                Quickstart::load_if_present(Path::new(DEFAULT_QUICKSTART))?
            }
            None => None,
        };
        Ok(fill(self, quickstart.as_ref())?)
    }

    fn is_incomplete(&self) -> bool {
        self.api.is_none() || self.app_code.is_none() || self.app_secret.is_none()
    }
}

/// Given values win; the quickstart fills the gaps.
pub fn fill(
    args: &ConnectionArgs,
    quickstart: Option<&Quickstart>,
) -> Result<Connection, MissingSettings> {
    let api = args
        .api
        .clone()
        .or_else(|| quickstart.map(|q| q.api.clone()));
    let app_code = args
        .app_code
        .clone()
        .or_else(|| quickstart.map(|q| q.bk_app_code.clone()));
    let app_secret = args
        .app_secret
        .clone()
        .or_else(|| quickstart.map(|q| q.bk_app_secret.clone()));
    match (api, app_code, app_secret) {
        (Some(api), Some(app_code), Some(app_secret)) => Ok(Connection {
            api,
            app_code,
            app_secret,
            timeout: args.http_timeout,
        }),
        (api, code, secret) => {
            let missing = [
                (api.is_none(), "--api (GSE_API)"),
                (code.is_none(), "--app-code (GSE_APP_CODE)"),
                (secret.is_none(), "--app-secret (GSE_APP_SECRET)"),
            ]
            .into_iter()
            .filter_map(|(absent, name)| absent.then_some(name))
            .collect();
            Err(MissingSettings { missing })
        }
    }
}

/// Some connection setting came from nowhere.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingSettings {
    pub missing: Vec<&'static str>,
}

impl std::fmt::Display for MissingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not set: {}; pass them as flags or env, or point --quickstart (GSE_QUICKSTART) at the \
             quickstart.json written by `gse-server quickstart` (./{DEFAULT_QUICKSTART} is tried by default)",
            self.missing.join(", ")
        )
    }
}

impl std::error::Error for MissingSettings {}

// === impl Quickstart ===

impl Quickstart {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Loads `path`, or `path/quickstart.json` when it is a directory.
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(QUICKSTART_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "could not read quickstart file {}; check --quickstart / GSE_QUICKSTART",
                file.display()
            )
        })?;
        Self::parse(&text).with_context(|| {
            format!(
                "quickstart file {} is not valid; it needs api, bk_app_code and bk_app_secret",
                file.display()
            )
        })
    }

    /// Like [`Quickstart::load`], but a missing file is not an error.
    pub fn load_if_present(path: &Path) -> Result<Option<Self>> {
        if path.exists() {
            Self::load(path).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"api":"http://127.0.0.1:59313","agent_listen":"127.0.0.1:28668",
        "bk_app_code":"gse-quickstart","bk_app_secret":"abc","alarm_log":"/tmp/alarms.jsonl",
        "server_pid":123,"agents":[{"bk_agent_id":"x","ip":"127.0.0.1","bk_cloud_id":0,"pid":456}]}"#;

    fn args() -> ConnectionArgs {
        ConnectionArgs {
            http_timeout: Duration::from_secs(30),
            ..ConnectionArgs::default()
        }
    }

    #[test]
    fn quickstart_json_parses_and_ignores_other_keys() {
        let q = Quickstart::parse(SAMPLE).unwrap();
        assert_eq!(q.api, "http://127.0.0.1:59313");
        assert_eq!(q.bk_app_code, "gse-quickstart");
        assert_eq!(q.bk_app_secret, "abc");
        assert!(Quickstart::parse(r#"{"api":"x"}"#).is_err());
    }

    #[test]
    fn given_values_win_and_the_quickstart_fills_the_rest() {
        let q = Quickstart::parse(SAMPLE).unwrap();
        let given = ConnectionArgs {
            app_code: Some("bk_job".into()),
            ..args()
        };
        let conn = fill(&given, Some(&q)).unwrap();
        assert_eq!(conn.api, "http://127.0.0.1:59313");
        assert_eq!(conn.app_code, "bk_job");
        assert_eq!(conn.app_secret, "abc");
    }

    #[test]
    fn nothing_given_names_every_missing_setting() {
        let err = fill(
            &ConnectionArgs {
                api: Some("http://x".into()),
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.missing,
            ["--app-code (GSE_APP_CODE)", "--app-secret (GSE_APP_SECRET)"]
        );
        let text = err.to_string();
        assert!(
            text.contains("--quickstart") && text.contains(DEFAULT_QUICKSTART),
            "{text}"
        );
    }

    #[test]
    fn a_quickstart_directory_means_the_file_inside_it() {
        let dir = std::env::temp_dir().join(format!("gsectl-qs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(QUICKSTART_FILE), SAMPLE).unwrap();
        let loaded = Quickstart::load(&dir);
        let absent = Quickstart::load_if_present(&dir.join("nope.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.unwrap().bk_app_code, "gse-quickstart");
        assert!(absent.unwrap().is_none());
    }
}

//! Logging set-up shared by the gse binaries: `tracing` to stderr or a file,
//! as text or JSON lines, filtered by `RUST_LOG` or the level given. Text
//! on stderr is coloured only when stderr is a terminal and `NO_COLOR` is
//! unset or empty (<https://no-color.org>): a pipe, the journal or a file
//! gets plain text.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;

/// The logging flags every gse binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter: error, warn, info, debug, trace, or a RUST_LOG-style list.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
    /// Append logs to this file instead of stderr.
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    /// Write logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// These flags as command-line arguments again (for a child process,
    /// e.g. the agent's worker).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--log-level".into(), self.log_level.clone().into()];
        if let Some(file) = &self.log_file {
            args.push("--log-file".into());
            args.push(file.clone().into_os_string());
        }
        if self.log_json {
            args.push("--log-json".into());
        }
        args
    }

    /// Installs the subscriber these flags describe; `default_file` is used
    /// when no --log-file was given.
    pub fn init(&self, default_file: Option<&Path>) -> std::io::Result<()> {
        init(
            &self.log_level,
            self.log_json,
            self.log_file.as_deref().or(default_file),
        )
    }
}

/// Opens `path` for appending, creating it and its directory if needed.
pub fn append_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open {} for appending: {e}", path.display()),
            )
        })
}

/// Installs the global subscriber. `filter` is an EnvFilter string such as
/// `info` (RUST_LOG wins when set); `file` appends logs there instead of
/// stderr. A second call keeps the first subscriber.
pub fn init(filter: &str, json: bool, file: Option<&Path>) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match file {
        Some(path) => {
            let f = append_file(path)?;
            let b = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f));
            if json {
                b.json().try_init()
            } else {
                b.try_init()
            }
        }
        None if json => builder.json().with_writer(std::io::stderr).try_init(),
        None => {
            let ansi = use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            );
            builder
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
        }
    };
    Ok(())
}

/// Whether text logs get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but "".
pub fn use_colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some("".into())));
    }
}

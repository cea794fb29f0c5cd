//! Logging set-up shared by the gse binaries: `tracing` to stderr or a file,
//! as text or JSON lines, filtered by `RUST_LOG` or the level given.

use std::path::Path;

use tracing_subscriber::EnvFilter;

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
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
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
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    Ok(())
}

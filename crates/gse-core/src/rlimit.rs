//! The open-files limit of processes that hold many connections (a node,
//! a proxy, quickstart, the benches): each agent is a descriptor.

/// Lifts the soft open-files limit to the hard one (children inherit it);
/// the limit in force after, or the error with the soft and hard limits.
#[cfg(unix)]
pub fn raise_open_files() -> Result<u64, String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("cannot raise the open-files limit from {soft} to {hard}: {e}"))?;
    }
    Ok(hard)
}

#[cfg(not(unix))]
pub fn raise_open_files() -> Result<u64, String> {
    Err("no open-files limit to raise on this platform".into())
}

//! Resolving the user a task runs as (T4), in the agent process.
//!
//! The lookup reads the user database through NSS (files, LDAP, sssd), which
//! allocates and may block: it must never happen in the forked child, and
//! should not happen on an async worker either (callers use
//! `spawn_blocking`). The result, [`RunAs`], carries everything the child
//! needs to switch: uid, primary gid, all groups, home and shell.

use gse_core::seams::executor::RunAs;
use gse_core::task::{ERR_NO_SUCH_USER, ERR_SPAWN};

/// Why a task's user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} does not exist on this host")]
    NoSuchUser(String),
    #[error("cannot look up user {name:?} in this host's user database: {reason}")]
    Lookup { name: String, reason: String },
    #[error("cannot list the groups of user {name:?}: {reason}")]
    Groups { name: String, reason: String },
    #[error("running as user {0:?} is not supported on this platform yet")]
    Unsupported(String),
}

impl UserError {
    /// The GSE error code reported for this failure.
    pub fn code(&self) -> i32 {
        match self {
            UserError::NoSuchUser(_) => ERR_NO_SUCH_USER,
            _ => ERR_SPAWN,
        }
    }
}

/// Looks `name` up with its groups. Blocking.
#[cfg(unix)]
pub fn resolve(name: &str) -> Result<RunAs, UserError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| UserError::Lookup {
            name: name.into(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| UserError::NoSuchUser(name.into()))?;
    run_as(user)
}

/// The agent's own user (for a login environment without a named user).
/// Blocking.
#[cfg(unix)]
pub fn current() -> Result<RunAs, UserError> {
    let uid = nix::unistd::Uid::effective();
    let user = nix::unistd::User::from_uid(uid)
        .map_err(|e| UserError::Lookup {
            name: format!("uid {uid}"),
            reason: e.to_string(),
        })?
        .ok_or_else(|| UserError::NoSuchUser(format!("uid {uid}")))?;
    run_as(user)
}

#[cfg(unix)]
fn run_as(user: nix::unistd::User) -> Result<RunAs, UserError> {
    let groups_err = |reason: String| UserError::Groups {
        name: user.name.clone(),
        reason,
    };
    let cname = std::ffi::CString::new(user.name.as_bytes())
        .map_err(|_| groups_err("the name contains a NUL byte".into()))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| groups_err(e.to_string()))?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
        shell: user.shell,
        name: user.name,
    })
}

#[cfg(windows)]
pub fn resolve(name: &str) -> Result<RunAs, UserError> {
    Err(UserError::Unsupported(name.into()))
}

#[cfg(windows)]
pub fn current() -> Result<RunAs, UserError> {
    Err(UserError::Unsupported("the agent's own user".into()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn t4_unknown_user_is_reported_by_name() {
        let e = resolve("gse-no-such-user-x").unwrap_err();
        assert_eq!(e.code(), ERR_NO_SUCH_USER);
        assert_eq!(
            e.to_string(),
            "user \"gse-no-such-user-x\" does not exist on this host"
        );
    }

    #[test]
    fn root_resolves_with_its_groups() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(
            current().unwrap().uid,
            nix::unistd::Uid::effective().as_raw()
        );
    }
}

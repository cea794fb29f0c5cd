//! The `owner` a target file is given (COMPAT §2.1 `target.owner`).
//!
//! Resolved once per transfer, by name, through the host's user database
//! (NSS: blocking), then applied to each file descriptor with `fchown`.

use std::fs::File;
use std::path::Path;

use super::InstallError;

/// A resolved owner: `user` (with the user's primary group) or `user:group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// What the request said, for messages.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Looks up `spec` (`user` or `user:group`). Blocking.
    #[cfg(unix)]
    pub fn resolve(spec: &str) -> Result<Owner, InstallError> {
        use nix::unistd::{Group, User};
        let lookup = |reason: nix::Error| InstallError::OwnerLookup {
            owner: spec.to_owned(),
            reason: reason.to_string(),
        };
        let missing = |what| InstallError::NoSuchOwner {
            owner: spec.to_owned(),
            what,
        };
        let (user_name, group_name) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        let user = User::from_name(user_name)
            .map_err(lookup)?
            .ok_or_else(|| missing("user"))?;
        let gid = match group_name {
            None => user.gid,
            Some(group) => {
                Group::from_name(group)
                    .map_err(lookup)?
                    .ok_or_else(|| missing("group"))?
                    .gid
            }
        };
        Ok(Owner {
            name: spec.to_owned(),
            uid: user.uid.as_raw(),
            gid: gid.as_raw(),
        })
    }

    #[cfg(not(unix))]
    pub fn resolve(_spec: &str) -> Result<Owner, InstallError> {
        Err(InstallError::OwnerUnsupported)
    }

    /// Gives the open `file` (at `path`, for messages) to this owner.
    pub(super) fn apply(&self, file: &File, path: &Path) -> Result<(), InstallError> {
        #[cfg(unix)]
        return std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
            .map_err(super::io_err("change the owner of", path));
        #[cfg(not(unix))]
        {
            let _ = (file, path);
            Err(InstallError::OwnerUnsupported)
        }
    }
}

//! Local planting attacks: a user makes a name in a world-writable
//! directory point somewhere the agent (root) should never write.

use std::path::Path;

use serde_json::{Value, json};

/// Makes `link` a symbolic link to `target` as the current user.
pub fn symlink(link: &Path, target: &Path) -> Value {
    match std::os::unix::fs::symlink(target, link) {
        Ok(()) => json!({"planted": true}),
        Err(e) => json!({"planted": false, "error": e.to_string()}),
    }
}

/// Makes the directory `path` (mode 0777) as the current user.
pub fn dir(path: &Path) -> Value {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o777).create(path) {
        Ok(()) => json!({"planted": true}),
        Err(e) => json!({"planted": false, "error": e.to_string()}),
    }
}

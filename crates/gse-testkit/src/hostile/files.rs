//! Local file attacks: reading what should be private.

use std::path::Path;

use serde_json::{Value, json};

/// Tries to read `path` as the current user.
pub fn read_file(path: &Path) -> Value {
    match std::fs::read(path) {
        Ok(bytes) => json!({"read": true, "bytes": bytes.len()}),
        Err(e) => json!({"read": false, "bytes": 0, "error": e.to_string()}),
    }
}

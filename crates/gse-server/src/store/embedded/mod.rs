//! The embedded state store: memory for reads and heartbeats, SQLite for
//! what must survive a restart. One module per concern: agents and apps in
//! [`agents`], task records and logs in [`tasks`], file transfers in
//! [`files`], data routes in [`routes`], identity pins in [`pins`], raised
//! `agent_lost` alarms in [`lost`].
//!
//! Heartbeats never touch SQLite (thousands per second at scale); a record
//! is written when an agent registers or goes offline. SQLite calls run on
//! tokio's blocking pool behind one connection mutex; WAL with
//! `synchronous=NORMAL` keeps each write cheap. After a restart every agent
//! loads as offline until it reconnects. SQLite's errors become
//! [`StoreError`]s by [`store_error`].

mod agents;
mod files;
mod lost;
mod pins;
mod routes;
mod tasks;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gse_core::app_secret::SecretHash;
use gse_core::seams::{AgentRecord, StoreError, StoreErrorKind, StoreKind};
use parking_lot::RwLock;
use rusqlite::{Connection, ErrorCode, params};

use agents::Mem;

const BACKEND: &str = "embedded";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_key TEXT PRIMARY KEY,
    agent_id  TEXT NOT NULL,
    record    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    app_code    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL
);
";

/// Memory + SQLite state store; see the module doc.
pub struct EmbeddedStore {
    mem: RwLock<Mem>,
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// Why the embedded store could not open.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the embedded state store {path}: {source}; check that the directory is writable and no other gse-server uses it"
)]
pub struct OpenError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// What kind of failure a SQLite error is: a busy or locked database, a
/// full disk or an I/O failure may pass (retry); a broken uniqueness rule is
/// a conflict; a damaged file or a value this version cannot read is
/// corrupt; a statement SQLite refuses is our bug.
fn error_kind(e: &rusqlite::Error) -> StoreErrorKind {
    use rusqlite::Error as E;
    match e {
        E::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::PermissionDenied => StoreErrorKind::Unavailable,
            ErrorCode::ConstraintViolation => StoreErrorKind::Conflict,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::SchemaChanged => {
                StoreErrorKind::Corrupt
            }
            ErrorCode::TooBig | ErrorCode::ParameterOutOfRange => StoreErrorKind::Invalid,
            _ => StoreErrorKind::Internal,
        },
        E::QueryReturnedNoRows => StoreErrorKind::NotFound,
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => StoreErrorKind::Corrupt,
        E::ToSqlConversionFailure(..) | E::InvalidParameterName(..) => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Internal,
    }
}

/// The [`StoreError`] of a SQLite error met while `doing`.
fn store_error(doing: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::new(error_kind(&e), BACKEND, doing, e.to_string())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path` and loads it.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let open_err = |source| OpenError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    dir.display()
                ))))
            })?;
        }
        // 0600 before SQLite opens it: its -wal and -shm files take the
        // database file's mode, so none of them is ever readable by others.
        // A store made by an older version may be 0644: close it (and its
        // WAL files) to others as well.
        gse_core::private_files::ensure_private_file(path)
            .and_then(|()| close_store_files(path))
            .map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    path.display()
                ))))
            })?;
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate_plain_secrets(&conn).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute_batch(tasks::SCHEMA).map_err(open_err)?;
        conn.execute_batch(files::SCHEMA).map_err(open_err)?;
        conn.execute_batch(routes::SCHEMA).map_err(open_err)?;
        conn.execute_batch(lost::SCHEMA).map_err(open_err)?;
        pins::create(&conn).map_err(open_err)?;
        let mem = agents::load(&conn).map_err(open_err)?;
        Ok(EmbeddedStore {
            mem: RwLock::new(mem),
            db: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the SQLite connection on the blocking pool.
    async fn with_db<T: Send + 'static>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        // The closure panicked (a bug) or the runtime is shutting down.
        .map_err(|e| StoreError::internal(BACKEND, doing, e.to_string()))?
        .map_err(store_error(doing))
    }

    async fn persist_agent(&self, rec: AgentRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(&rec).expect("agent records always serialise");
        self.with_db("saving an agent", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO agents (agent_key, agent_id, record) VALUES (?1, ?2, ?3)",
                params![rec.key.to_string(), rec.agent_id, json],
            )
            .map(|_| ())
        })
        .await
    }
}

/// Makes the store file and its `-wal`/`-shm` companions 0600 where they
/// exist and others could read them.
fn close_store_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if gse_core::private_files::exposure(&file, "the state store").is_some() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                tracing::warn!(file = %file.display(), "the state store was readable by other users; made it 0600");
            }
        }
    }
    Ok(())
}

/// Stores of earlier versions kept app secrets in plain text
/// (`apps.app_secret`): hash each one and rename the column, in one
/// transaction, so no plain secret survives the upgrade.
fn migrate_plain_secrets(conn: &Connection) -> rusqlite::Result<()> {
    let has_plain_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('apps') WHERE name = 'app_secret'")?
        .exists([])?;
    if !has_plain_column {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT app_code, app_secret FROM apps")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (code, secret) in &rows {
        let hash = match SecretHash::parse(secret) {
            Ok(already) => already,
            Err(_) => SecretHash::hash(secret),
        };
        tx.execute(
            "UPDATE apps SET app_secret = ?1 WHERE app_code = ?2",
            params![hash.as_str(), code],
        )?;
    }
    tx.execute_batch("ALTER TABLE apps RENAME COLUMN app_secret TO secret_hash")?;
    tx.commit()?;
    // The old values may linger in free pages: rewrite the file (in WAL
    // mode VACUUM writes into the WAL), then fold the WAL into it and empty it.
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    tracing::info!(
        apps = rows.len(),
        "replaced the plain-text app secrets of an older state store by salted hashes"
    );
    Ok(())
}

impl StoreKind for EmbeddedStore {
    fn kind(&self) -> &'static str {
        BACKEND
    }
}

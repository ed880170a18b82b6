//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, so a commit is on
//! disk before the 200. Writes go through a pool of exactly one connection (SQLite has one writer
//! anyway; queueing in the pool instead of on the file lock means no `SQLITE_BUSY` and no
//! deferred-transaction upgrade failures), reads through a pool of several.
//!
//! The statements and trait bodies are shared with the MySQL backend (`sql.rs`); the single
//! writer is why this dialect needs no row locks and never retries.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use crate::{Result, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await?;
        let store = Self { writer, reader };
        crate::report_username_collisions(&store).await?;
        Ok(store)
    }

    /// Closes both pools (waits for connections to be returned), releasing the file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn inserted_id(done: &SqliteQueryResult) -> Result<i64> {
        Ok(done.last_insert_rowid())
    }

    /// Runs `attempt` once: with one writer connection there is no lock to wait for in a
    /// cycle, so no deadlock victim to run again.
    async fn retry<T, F, Fut>(_what: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        Ok(attempt().await?)
    }
}

crate::sql::sql_store! {
    store: SqliteStore,
    db: sqlx::Sqlite,
    for_update: "",
    share_lock: "",
    contains: "LIKE ? ESCAPE '\\'",
    greatest: "MAX",
    upsert_member: "INSERT INTO room_members \
        (room_id, user_id, role, group_nickname, joined_at, joined_seq, delivered_seq) \
        VALUES (?, ?, ?, ?, ?, ?, ?) \
        ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role, \
        group_nickname = excluded.group_nickname, joined_at = excluded.joined_at, \
        joined_seq = excluded.joined_seq, \
        delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
    upsert_device_cursor: "ON CONFLICT (user_id, device_id, room_id) DO UPDATE \
        SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
    // lower() folds ASCII letters only, the same folding as the pattern's.
    search_users: "SELECT * FROM users WHERE id > ? AND (lower(username) LIKE ? ESCAPE '\\' \
        OR lower(nickname) LIKE ? ESCAPE '\\') ORDER BY id LIMIT ?",
}

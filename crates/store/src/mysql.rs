//! The distributed backend: MySQL or MariaDB (InnoDB), shared by every instance of every service.
//! It runs the same statements as [`crate::sqlite::SqliteStore`] (written once in `sql.rs`);
//! this file holds connecting, the migration lock, the error numbers that mean busy, the deadlock
//! retry and the MySQL spelling of a few statements. What differs is concurrency, because several
//! Send instances append at once:
//!
//! - An append batch first locks every room it touches (`SELECT … FOR UPDATE`, one statement per
//!   chunk, in ascending id order, so two batches over the same rooms queue instead of
//!   deadlocking). Holding the room row is what makes `seq = last_seq + 1` gapless.
//! - Idempotency by `(sender_id, client_msg_id)` is checked by a plain read, and enforced by the
//!   unique key: when a transaction of another instance stored the same pair in the meantime
//!   (possible when it went to another room, whose lock we do not hold), our insert fails with a
//!   duplicate-key error. InnoDB rolls back only that statement, so the batch goes on: a locking
//!   read (`LOCK IN SHARE MODE`, which sees the latest committed row whatever the snapshot) fetches
//!   the winner's message, and the result is `Duplicate` or `ClientIdConflict` like a plain hit.
//!   The message's insert is its only write (`rooms.last_seq` is written once per room at the end
//!   of the batch), so the failed statement leaves nothing to undo and no savepoint is needed.
//! - A transaction InnoDB chose as a deadlock victim is rolled back whole by the server; it is
//!   retried from the start a few times before the error is reported as
//!   [`StoreError::Unavailable`].

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::mysql::{MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlQueryResult};

use crate::{Result, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// Server error numbers that mean "busy", not "broken".
const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// How many times a transaction chosen as a deadlock victim is run again.
const DEADLOCK_RETRIES: u32 = 5;

/// How long an instance waits for another one's migrations.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(300);

/// The MySQL/MariaDB store.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

fn server_error_number(db: &dyn DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number)
}

/// The server is overloaded or a lock could not be had: retrying later may work.
pub(crate) fn is_busy(db: &dyn DatabaseError) -> bool {
    matches!(
        server_error_number(db),
        Some(ER_CON_COUNT_ERROR | ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK)
    )
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if server_error_number(db.as_ref()) == Some(ER_LOCK_DEADLOCK))
}

impl MySqlStore {
    /// Connects a pool of at most `max_connections` to `url` (`mysql://user:pass@host:port/db`)
    /// and runs the migrations (under a named server lock, so instances starting together are
    /// fine).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        // A fresh server has no database yet: create it (the user needs the right to).
        use sqlx::migrate::MigrateDatabase;
        if !sqlx::MySql::database_exists(url).await? {
            sqlx::MySql::create_database(url).await?;
        }
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        migrate(&pool).await?;
        let store = Self { pool };
        crate::report_username_collisions(&store).await?;
        Ok(store)
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn reader(&self) -> &MySqlPool {
        &self.pool
    }

    fn writer(&self) -> &MySqlPool {
        &self.pool
    }

    fn inserted_id(done: &MySqlQueryResult) -> Result<i64> {
        let id = done.last_insert_id();
        i64::try_from(id)
            .map_err(|_| StoreError::Internal(format!("auto-increment id {id} out of range")))
    }

    /// Runs `attempt` until it is not a deadlock victim (InnoDB rolled the victim back whole),
    /// at most [`DEADLOCK_RETRIES`] times more.
    async fn retry<T, F, Fut>(what: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(e) if is_deadlock(&e) && retries < DEADLOCK_RETRIES => {
                    retries += 1;
                    tracing::debug!(retries, what, "deadlock victim; retrying");
                }
                done => return Ok(done?),
            }
        }
    }
}

/// Runs the migrations under our own named server lock. The migrator's own lock is
/// `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL (it only waits forever on MySQL),
/// and whose result sqlx ignores: instances starting together would race to apply a migration.
async fn migrate(pool: &MySqlPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let got: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('ruststacker.migrate.', MD5(DATABASE())), ?)")
            .bind(MIGRATION_LOCK_WAIT.as_secs())
            .fetch_one(&mut *conn)
            .await?;
    if got != Some(1) {
        return Err(StoreError::Unavailable(format!(
            "could not take the migration lock within {}s (another instance migrating?)",
            MIGRATION_LOCK_WAIT.as_secs()
        )));
    }
    let ran = MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|e| StoreError::Internal(format!("migration failed: {e}")));
    let released =
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('ruststacker.migrate.', MD5(DATABASE())))")
            .execute(&mut *conn)
            .await;
    ran.and(released.map(|_| ()).map_err(StoreError::from))
}

crate::sql::sql_store! {
    store: MySqlStore,
    db: sqlx::MySql,
    for_update: " FOR UPDATE",
    // Reads the latest committed row whatever the transaction's snapshot.
    share_lock: " LOCK IN SHARE MODE",
    // The backslash is LIKE's default escape character in MySQL and MariaDB; the binary
    // collation leaves every character but the lowered ASCII letters exact, as in SQLite.
    contains: "LIKE ? COLLATE utf8mb4_bin",
    greatest: "GREATEST",
    upsert_member: "INSERT INTO room_members \
        (room_id, user_id, role, group_nickname, joined_at, joined_seq, delivered_seq) \
        VALUES (?, ?, ?, ?, ?, ?, ?) \
        ON DUPLICATE KEY UPDATE role = VALUES(role), \
        group_nickname = VALUES(group_nickname), joined_at = VALUES(joined_at), \
        joined_seq = VALUES(joined_seq), \
        delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
    upsert_device_cursor: "ON DUPLICATE KEY UPDATE \
        delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
    search_users: crate::mysql::search_users_sql(),
}

/// MySQL's LOWER() folds far more than ASCII, so the nickname is folded letter by letter (as
/// the rooms' search_name migration does); usernames are ASCII already. The binary collation
/// leaves every other character exact, as in SQLite.
pub(crate) fn search_users_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT * FROM users WHERE id > ? AND (LOWER(username) LIKE ? COLLATE utf8mb4_bin \
             OR {} LIKE ? COLLATE utf8mb4_bin) ORDER BY id LIMIT ?",
            ascii_lower("nickname")
        )
    });
    SQL.as_str()
}

/// An SQL expression: `column` with its ASCII capital letters lowered and nothing else changed.
fn ascii_lower(column: &str) -> String {
    ('A'..='Z').fold(format!("{column} COLLATE utf8mb4_bin"), |expr, c| {
        format!(
            "REPLACE({expr}, '{c}', '{}') COLLATE utf8mb4_bin",
            c.to_ascii_lowercase()
        )
    })
}
